"""The pruning steps' settings: plain pydantic, importable without torch (the API validates
recipes with them and never loads a model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressors.step_config import (
    ExcludeLayers,
    IncludeLayers,
    Pattern,
    Sparsity,
    StepConfig,
    parse_nm,
)


class PruningConfig(StepConfig):
    """Fields every pruning method shares; `sparsity` follows from the pattern when N:M."""

    sparsity: Sparsity | None = Field(
        None, description="fraction of weights set to zero, in [0, 1); implied by N:M patterns"
    )
    pattern: Pattern = "unstructured"
    include: IncludeLayers = None
    exclude: ExcludeLayers = None

    @model_validator(mode="after")
    def _sparsity_matches_pattern(self) -> PruningConfig:
        nm = parse_nm(self.pattern)
        if nm is None and self.sparsity is None:
            raise ValueError("sparsity: required for unstructured pruning, in [0, 1)")
        if nm is not None and self.sparsity is not None:
            implied = 1 - nm[0] / nm[1]
            if abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity: pattern {self.pattern} implies {implied:g}; omit sparsity "
                    "or set it to that value"
                )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern)

    @property
    def target_sparsity(self) -> float:
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else float(self.sparsity or 0.0)


class MagnitudeConfig(PruningConfig):
    """Prune the smallest-magnitude weights, per whole matrix or per output row."""

    method: Literal["magnitude"] = "magnitude"
    scope: Literal["matrix", "row"] = Field(
        "matrix", description="compare weights across the whole matrix or within each row"
    )


class WandaConfig(PruningConfig):
    """Pruning by weights and activations; needs calibration text, no weight update."""

    method: Literal["wanda"] = "wanda"


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
