"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with weight reconstruction, per block.

On the sequential engine, like Wanda: block k's layer inputs come from the already-pruned
blocks 0..k-1. One pass over the dense block accumulates each layer's `XᵀX`
(`ops.hessian`); then every layer of the block is pruned and reconstructed by
`obs.sparsegpt_prune` and written back through
`weight_matrix` (so GPT-2's transposed Conv1D works too); the engine then runs the pruned
block to produce the next block's inputs. A mixture-of-experts block whose Hessians would not
fit at once is done in several such passes (`BlockContext.hessian_passes`: the dense layers,
then the experts a chunk at a time).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.experts import starved
from compressors.engine.modules import select_layers, weight_matrix
from compressors.engine.pruning import PruningRecord, apply_mask
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.methods.sparsegpt.obs import PruneStats, sparsegpt_prune
from compressors.ops.hessian import HessianAccumulator, HessianFactor
from compressors.ops.masks import choose_mask


@torch.no_grad()
def prune_layer(
    layer: nn.Module, factor: HessianFactor, config: SparseGPTConfig,
    sparsity: float | None = None,
) -> PruneStats:
    """Prune one layer in place from its Hessian factor; keeps the layer's dtype.
    `sparsity`: this layer's (default: the step's target)."""
    weight = weight_matrix(layer)
    sparsity = config.target_sparsity if sparsity is None else sparsity
    pruned, stats = sparsegpt_prune(
        weight, factor, sparsity=sparsity, nm=config.nm,
        blocksize=config.blocksize, scope=config.scope,
    )
    weight.copy_(pruned.to(device=weight.device, dtype=weight.dtype))
    return stats


def run(model: nn.Module, config: SparseGPTConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)
    stats: dict[str, PruneStats] = {}
    record = PruningRecord(context, config)

    def prune_block(block: BlockContext) -> None:
        for part in block.hessian_passes():
            prune_pass(part)
        record.add(block.layers)

    def prune_pass(block: BlockContext) -> None:
        hessians = HessianAccumulator()
        tokens = block.collect(hessians, all_experts=context.calibration.all_experts(True))
        thin = starved(block.layers, tokens)
        hessians.discard(thin)
        record.fallbacks.update(thin)
        factors = hessians.factors(config.dampening)
        for name, layer in block.layers.items():
            if name in thin:  # no Hessian worth the name: magnitude, within the same pattern
                weight = weight_matrix(layer)
                apply_mask(layer, choose_mask(weight.abs().float(), config.sparsity_for(name),
                                              config.nm, per_row=True))
                continue
            stats[name] = prune_layer(layer, factors[name], config, config.sparsity_for(name))

    run_sequential(model, context.calibration_tokens(), layers, prune_block, context.progress)
    details = {**record.details(), **_sparsegpt_details(stats, config)}
    return StepResult(details=details)


def _sparsegpt_details(stats: dict[str, PruneStats], config: SparseGPTConfig) -> dict[str, Any]:
    """Only the unusual is listed per layer (fallbacks, dead inputs); the loss is summed."""
    return {
        "blocksize": config.blocksize,
        "dampening": config.dampening,
        "scope": config.scope if config.nm is None else None,
        "obs_loss_total": sum(s.loss for s in stats.values()),
        "cholesky_fallbacks": {
            name: s.dampening for name, s in stats.items() if s.attempts > 1
        },
        "dead_inputs": {name: s.dead_inputs for name, s in stats.items() if s.dead_inputs},
    }
