"""Magnitude pruning (Han et al., 2015): drop the smallest |W|, no data needed."""

from __future__ import annotations

from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.pruning import PruningRecord, apply_mask
from compressors.engine.sequential import BlockContext, run_blockwise
from compressors.methods.magnitude.config import MagnitudeConfig
from compressors.ops.masks import choose_mask


def run(model: nn.Module, config: MagnitudeConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)
    record = PruningRecord(context, config)

    def prune_block(block: BlockContext) -> None:
        for name, layer in block.layers.items():
            weight = weight_matrix(layer)
            keep = choose_mask(weight.abs().float(), config.sparsity_for(name), config.nm,
                               per_row=config.scope == "row")
            apply_mask(layer, keep)
        record.add(block.layers)

    run_blockwise(model, layers, prune_block, context.progress)
    return StepResult(details=record.details())
