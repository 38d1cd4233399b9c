"""Magnitude pruning (Han et al., 2015): drop the smallest |W|, no data needed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import nn

from compressors.context import StepContext, StepResult
from compressors.modules import select_layers, weight_matrix
from compressors.pruning.apply import apply_mask, layer_sparsity, record_masks
from compressors.pruning.masks import choose_mask
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


def run_magnitude(model: nn.Module, config: MagnitudeConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)
    for index, (name, layer) in enumerate(layers.items()):
        weight = weight_matrix(layer)
        keep = choose_mask(
            weight.abs().float(), config.target_sparsity, config.nm, per_row=config.scope == "row"
        )
        apply_mask(layer, keep)
        context.progress((index + 1) / len(layers), name)
    record_masks(context, layers)
    return StepResult(details=_pruning_details(layers, config))


def _pruning_details(layers: dict[str, nn.Module], config: PruningConfig) -> dict:
    return {
        "layers": len(layers),
        "pattern": config.pattern,
        "target_sparsity": config.target_sparsity,
        "achieved_sparsity": {name: layer_sparsity(layer) for name, layer in layers.items()},
    }
