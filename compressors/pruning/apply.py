"""Applying keep-masks to layers, and remembering them for later steps (PERP keeps them exact)."""

from __future__ import annotations

import torch
from torch import nn

from compressors.context import StepContext
from compressors.modules import weight_matrix


@torch.no_grad()
def apply_mask(layer: nn.Module, keep: torch.Tensor) -> None:
    """Zero the pruned weights in place (works through Conv1D's transposed view)."""
    weight = weight_matrix(layer)
    weight.mul_(keep.to(device=weight.device, dtype=weight.dtype))


def record_masks(context: StepContext, layers: dict[str, nn.Module]) -> None:
    """Store the current nonzero pattern of each pruned layer for steps that must preserve it."""
    masks = context.state.setdefault("masks", {})
    for name, layer in layers.items():
        masks[name] = (weight_matrix(layer) != 0).cpu()


def layer_sparsity(layer: nn.Module) -> float:
    weight = weight_matrix(layer)
    return float((weight == 0).sum().item() / weight.numel())
