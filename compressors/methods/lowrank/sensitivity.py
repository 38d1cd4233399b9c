"""Measured loss sensitivity of each layer to its truncation, for `allocation: sensitivity`.

The `loss` allocation compares layers by the share of their own output energy a truncation
discards. That ignores what a layer's output error does downstream: an error in an early
`down_proj` is carried through every later block, one in a `k_proj` is squashed by the
softmax. On SmolLM2 that allocation measured 2.68x dense perplexity at 80% kept although every
layer's relative output error was about 1.6%. Here each layer is truncated alone at a
reference rank (the uniform allocation's), the whole model's mean next-token loss on a few
calibration windows is measured, and the loss increase per unit of relative output error
becomes the layer's weight in the allocation. The truncation loss is quadratic in the output
error, so scaling it linearly with the discarded σᵢ² share is the second-order assumption the
report's predicted-vs-measured columns check.

Needs the whole model in memory (one forward per targeted layer); the step refuses the
allocation in the other placements.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from compressors.engine.modules import weight_matrix
from compressors.evaluate import perplexity

ProgressFn = Callable[[float, str], None]


@torch.no_grad()
def loss_increases(
    model: nn.Module, layers: dict[str, nn.Module], truncated: dict[str, torch.Tensor],
    windows: torch.Tensor, progress: ProgressFn | None = None,
) -> dict[str, float]:
    """Per layer in `truncated`: mean NLL with that layer alone replaced by its truncation,
    minus the unchanged model's (weights restored after each probe)."""
    base = math.log(perplexity(model, windows))
    increases: dict[str, float] = {}
    for index, (name, replacement) in enumerate(truncated.items()):
        weight = weight_matrix(layers[name])
        saved = weight.detach().clone()
        try:
            weight.copy_(replacement.to(device=weight.device, dtype=weight.dtype))
            increases[name] = math.log(perplexity(model, windows)) - base
        finally:
            weight.copy_(saved)
        if progress is not None:
            progress((index + 1) / len(truncated), f"sensitivity {index + 1}/{len(truncated)}")
    return increases
