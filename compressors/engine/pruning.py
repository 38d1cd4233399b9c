"""What the three pruning methods share around the mask math: applying keep-masks, recording
them for later steps (PERP keeps them exact), and the step's report details."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressors.engine.context import StepContext
from compressors.engine.modules import weight_matrix
from compressors.recipe.fields import PruningConfig


@torch.no_grad()
def apply_mask(layer: nn.Module, keep: torch.Tensor) -> None:
    """Zero the pruned weights in place (works through Conv1D's transposed view)."""
    weight = weight_matrix(layer)
    weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))


def layer_sparsity(layer: nn.Module) -> float:
    weight = weight_matrix(layer)
    return float((weight == 0).sum().item() / weight.numel())


class PruningRecord:
    """What a pruning step notes of each layer right after pruning it, while its block is
    loaded (a streamed model holds one block at a time): its sparsity for the report and,
    when a later step must preserve it, its keep-mask."""

    def __init__(self, context: StepContext, config: PruningConfig) -> None:
        self.context, self.config = context, config
        self.achieved: dict[str, float] = {}
        # expert matrices routed too few calibration tokens, pruned data-free: {name: tokens}
        self.fallbacks: dict[str, int] = {}

    def add(self, layers: dict[str, nn.Module]) -> None:
        for name, layer in layers.items():
            self.achieved[name] = layer_sparsity(layer)
            if name not in self.context.pruned_layers:
                self.context.pruned_layers.append(name)
            if self.context.keep_masks:
                self.context.masks[name] = (weight_matrix(layer) != 0).cpu()

    def details(self) -> dict[str, Any]:
        """The step entry every pruning method reports."""
        return {
            "layers": len(self.achieved),
            "pattern": self.config.pattern,
            "target_sparsity": self.config.target_sparsity,
            "layer_sparsity": self.config.layer_sparsity,
            "achieved_sparsity": self.achieved,
            "experts_without_enough_tokens": self.fallbacks,
        }
