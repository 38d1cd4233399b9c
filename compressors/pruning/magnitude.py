"""Magnitude pruning (Han et al., 2015): drop the smallest |W|, no data needed."""

from __future__ import annotations

from torch import nn

from compressors.context import StepContext, StepResult
from compressors.modules import select_layers, weight_matrix
from compressors.pruning.apply import apply_mask, layer_sparsity, record_masks
from compressors.pruning.config import MagnitudeConfig, PruningConfig
from compressors.pruning.masks import choose_mask


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
