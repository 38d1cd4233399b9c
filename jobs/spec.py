"""What a job carries: a recipe, or a goal its search finds one for (torch-free).

The jobs core asks the same things of either, so submission, admission, the record and the
worker each have one path: both answer `methods_used` (the methods the job may run),
`planned()` (the recipes it will run that a submission can check, each part located where the
user wrote it) and `needs_causal_lm()` (which of its parts need a model with an LM head).
"""

from __future__ import annotations

from typing import Any

from compressors.recipe.schema import Recipe
from compressors.search.goal import Goal

JobSpec = Recipe | Goal


def body_field(spec: JobSpec) -> str:
    """The submission field it came in, where its errors point: `recipe` or `goal`."""
    return "goal" if isinstance(spec, Goal) else "recipe"


def record_fields(spec: JobSpec) -> tuple[dict[str, Any], Goal | None]:
    """(recipe, goal) as a job record keeps them: a recipe's JSON with every default written
    out; a goal job's recipe stays empty until its search has chosen one."""
    if isinstance(spec, Goal):
        return {}, spec
    return spec.to_json_dict(), None
