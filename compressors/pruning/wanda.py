"""Wanda (Sun et al., 2023): prune by |W_ij| * ||X_j||_2, compared within each output row.

The input norms come from the calibration windows through the sequential engine, so block k
sees activations produced by the already-pruned blocks 0..k-1, as in the paper's code. All
layers of a block are scored on one pass over the dense block, then pruned together.
"""

from __future__ import annotations

import torch
from torch import nn

from compressors.context import StepContext, StepResult
from compressors.modules import select_layers, weight_matrix
from compressors.pruning.apply import apply_mask, record_masks
from compressors.pruning.config import WandaConfig
from compressors.pruning.magnitude import _pruning_details
from compressors.pruning.masks import choose_mask, wanda_scores
from compressors.sequential import BlockContext, run_sequential


class InputNormAccumulator:
    """Per-layer running sum of squared input activations, one value per input feature."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        squared = inputs.float().pow(2).sum(dim=0)
        if name in self.sums:
            self.sums[name] += squared
        else:
            self.sums[name] = squared


def run_wanda(model: nn.Module, config: WandaConfig, context: StepContext) -> StepResult:
    layers = select_layers(model, config.include, config.exclude)

    def prune_block(block: BlockContext) -> None:
        norms = InputNormAccumulator()
        block.collect(norms)
        for name, layer in block.layers.items():
            scores = wanda_scores(weight_matrix(layer), norms.sums[name])
            apply_mask(layer, choose_mask(scores, config.target_sparsity, config.nm))

    run_sequential(model, context.calibration_windows, layers, prune_block, context.progress)
    record_masks(context, layers)
    return StepResult(details=_pruning_details(layers, config))
