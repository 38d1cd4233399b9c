"""Wanda (Sun et al., 2023): prune by |W_ij| * ||X_j||_2, compared within each output row.

The input norms come from the calibration windows through the sequential engine, so block k
sees activations produced by the already-pruned blocks 0..k-1, as in the paper's code. All
layers of a block are scored on one pass over the dense block, then pruned together. An
expert matrix of a MoE block is scored on the tokens routed to it; one routed too few
(`engine.experts.MIN_EXPERT_TOKENS`) is pruned by magnitude, and counted.
"""

from __future__ import annotations

from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.experts import starved
from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.pruning import PruningRecord, apply_mask
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.engine.statistics import InputNormAccumulator
from compressors.methods.wanda.config import WandaConfig
from compressors.ops.masks import choose_mask, wanda_scores


def run(model: nn.Module, config: WandaConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)
    record = PruningRecord(context, config)

    def prune_block(block: BlockContext) -> None:
        norms = InputNormAccumulator()
        tokens = block.collect(norms, all_experts=context.calibration.all_experts(False))
        thin = starved(block.layers, tokens)
        record.fallbacks.update(thin)
        for name, layer in block.layers.items():
            weight = weight_matrix(layer)
            scores = weight.abs().float() if name in thin else wanda_scores(weight,
                                                                            norms.sums[name])
            apply_mask(layer, choose_mask(scores, config.sparsity_for(name), config.nm))
        record.add(block.layers)

    run_sequential(model, context.calibration_tokens(), layers, prune_block, context.progress)
    return StepResult(details=record.details())
