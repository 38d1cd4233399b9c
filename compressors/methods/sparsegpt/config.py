"""The `sparsegpt` step's settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import PruningConfig
from compressors.recipe.step import MemoryNeeds


class SparseGPTConfig(PruningConfig):
    """OBS pruning from each layer's Hessian; needs calibration text, updates kept weights."""

    method: Literal["sparsegpt"] = "sparsegpt"
    blocksize: int = Field(
        128, ge=1, le=65536,
        description="columns per lazy-update block; the mask is chosen once per block",
    )
    dampening: float = Field(
        0.01, ge=0.0, le=10.0,
        description="fraction of the mean Hessian diagonal added to it, in [0, 10]; raised "
        "x10 automatically (and reported) if the Cholesky factorisation fails",
    )
    scope: Literal["block", "row"] = Field(
        "block",
        description="unstructured only: compare scores across all rows of a column block "
        "(reference; exact per-layer sparsity) or within each row (exact per-row sparsity)",
    )

    @model_validator(mode="after")
    def _blocksize_fits_pattern(self) -> SparseGPTConfig:
        nm = self.nm
        if nm is not None and self.blocksize % nm[1]:
            raise ValueError(
                f"blocksize: {self.blocksize} must be a multiple of M={nm[1]} for "
                f"pattern {self.pattern}"
            )
        return self


METHOD = Method(
    "sparsegpt", SparseGPTConfig,
    "SparseGPT: OBS pruning with weight reconstruction from each layer's Hessian "
    "(Frantar & Alistarh 2023); unstructured or N:M",
    experts="handled",
    needs_calibration=True, blockwise=True, memory=MemoryNeeds(hessians=True),
    search=SearchSpace(
        ("s0.25", "s0.5"), mixed_levels=True, needs_input_norms=True,
        perturb="compressors.methods.sparsegpt.search:perturb",
        step="compressors.methods.sparsegpt.search:step",
        note="non-uniform per-layer sparsity (layer_sparsity); sensitivity measured with "
             "Wanda's mask (no reconstruction): an upper bound on SparseGPT's error"))
