"""SparseGPT (Frantar & Alistarh, 2023): OBS pruning with weight reconstruction, per block.

On the sequential engine, like Wanda: block k's layer inputs come from the already-pruned
blocks 0..k-1. One pass over the dense block accumulates each layer's `XᵀX` (float32 products,
float64 sums, so 16k+ tokens add up without drift); then every layer of the block is pruned
and reconstructed by `sparsegpt_math.sparsegpt_prune` and written back through
`weight_matrix` (so GPT-2's transposed Conv1D works too); the engine then runs the pruned
block to produce the next block's inputs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressors.context import StepContext, StepResult
from compressors.modules import select_layers, weight_matrix
from compressors.pruning.apply import record_masks
from compressors.pruning.config import SparseGPTConfig
from compressors.pruning.magnitude import _pruning_details
from compressors.pruning.sparsegpt_math import (
    HessianFactor,
    PruneStats,
    factor_hessian,
    hessian_from_sum,
    sparsegpt_prune,
)
from compressors.sequential import BlockContext, run_sequential


class HessianAccumulator:
    """Per-layer running `XᵀX` (float64) and token count, fed by the engine's `collect`.

    Layers fed the very same input tensor (Llama's q/k/v, gate/up; GPT-2's fused c_attn has
    one anyway) reuse the product just computed instead of recomputing it: same storage,
    shape, strides and version counter as the previous input, which is held so its memory
    cannot be reused by another tensor meanwhile.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None

    def __call__(self, name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        product = self._shared_product(inputs)
        if product is None:
            x = inputs.float()
            product = (x.T @ x).to(torch.float64)
            self._last = (inputs, inputs._version, product)
        if name in self.sums:
            self.sums[name] += product
            self.tokens[name] += inputs.shape[0]
        else:
            self.sums[name] = product.clone()
            self.tokens[name] = inputs.shape[0]

    def _shared_product(self, inputs: torch.Tensor) -> torch.Tensor | None:
        if self._last is None:
            return None
        last, version, product = self._last
        same = (inputs.data_ptr() == last.data_ptr() and inputs.shape == last.shape
                and inputs.stride() == last.stride() and inputs._version == version)
        return product if same else None

    def factors(self, dampening: float) -> dict[str, HessianFactor]:
        """One factor per distinct Hessian (`2 XᵀX / n`); the sums are freed."""
        self._last = None
        factors: dict[str, HessianFactor] = {}
        seen: list[tuple[torch.Tensor, int, HessianFactor]] = []
        for name, total in self.sums.items():
            tokens = self.tokens[name]
            match = next((f for s, n, f in seen if n == tokens and torch.equal(s, total)), None)
            if match is None:
                match = factor_hessian(hessian_from_sum(total, tokens), dampening)
                seen.append((total, tokens, match))
            factors[name] = match
        self.sums.clear()
        return factors


@torch.no_grad()
def prune_layer(
    layer: nn.Module, factor: HessianFactor, config: SparseGPTConfig
) -> PruneStats:
    """Prune one layer in place from its Hessian factor; keeps the layer's dtype."""
    weight = weight_matrix(layer)
    pruned, stats = sparsegpt_prune(
        weight, factor, sparsity=config.target_sparsity, nm=config.nm,
        blocksize=config.blocksize, scope=config.scope,
    )
    weight.copy_(pruned.to(device=weight.device, dtype=weight.dtype))
    return stats


def run_sparsegpt(model: nn.Module, config: SparseGPTConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)
    stats: dict[str, PruneStats] = {}

    def prune_block(block: BlockContext) -> None:
        hessians = HessianAccumulator()
        block.collect(hessians)
        factors = hessians.factors(config.dampening)
        for name, layer in block.layers.items():
            stats[name] = prune_layer(layer, factors[name], config)

    run_sequential(model, context.calibration_windows, layers, prune_block, context.progress)
    record_masks(context, layers)
    details = {**_pruning_details(layers, config), **_sparsegpt_details(stats, config)}
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
