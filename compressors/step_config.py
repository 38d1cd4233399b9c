"""The base every recipe step's config derives from, and the shared pruning-pattern field.

Kept apart from `recipe.py` so method modules can import it without importing the registry.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NM = re.compile(r"^(\d+):(\d+)$")


class StepConfig(BaseModel):
    """A recipe step. Unknown keys are errors, so a typo never silently changes a job."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """`"unstructured"` -> None; `"N:M"` -> (N, M): keep at most N nonzeros in each M-group."""
    if pattern == "unstructured":
        return None
    match = _NM.match(pattern)
    if not match:
        raise ValueError("pattern must be 'unstructured' or 'N:M' (e.g. '2:4', '4:8')")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise ValueError(f"pattern {pattern!r}: need 1 <= N < M")
    return n, m


def _check_pattern(value: str) -> str:
    parse_nm(value)
    return value


Pattern = Annotated[
    str,
    AfterValidator(_check_pattern),
    Field(
        description="'unstructured' or 'N:M' (keep N nonzeros in every group of M inputs)",
        json_schema_extra={"examples": ["unstructured", "2:4", "4:8"]},
    ),
]
Sparsity = Annotated[float, Field(ge=0.0, lt=1.0)]
IncludeLayers = Annotated[
    list[str] | None,
    Field(description="regexes on full layer names (re.search); default: Linear layers in blocks"),
]
ExcludeLayers = Annotated[
    list[str] | None,
    Field(description="regexes on full layer names (re.search) removed from the selection"),
]
