"""The `magnitude` step's settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.methods.method import Method
from compressors.recipe.fields import PruningConfig


class MagnitudeConfig(PruningConfig):
    """Prune the smallest-magnitude weights, per whole matrix or per output row."""

    method: Literal["magnitude"] = "magnitude"
    scope: Literal["matrix", "row"] = Field(
        "matrix", description="compare weights across the whole matrix or within each row"
    )


METHOD = Method(
    "magnitude", MagnitudeConfig,
    "prune the smallest |W| per matrix or per row; unstructured or N:M",
    blockwise=True)
