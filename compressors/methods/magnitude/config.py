"""The `magnitude` step's settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.methods.method import Method, SearchSpace
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
    experts="handled",
    blockwise=True,
    search=SearchSpace(
        ("s0.25", "s0.5"), mixed_levels=True,
        perturb="compressors.methods.magnitude.search:perturb",
        step="compressors.methods.magnitude.search:step",
        note="non-uniform per-layer sparsity (layer_sparsity); zeros are stored, so the "
             "checkpoint does not shrink"))
