"""Statistics of a layer's inputs gathered while a block runs (`BlockContext.collect`).

Why here: Wanda scores weights with these norms, and the search's sensitivity pass hands the
same norms to a method's cheap perturbation (`SearchSpace.needs_input_norms`); both walk the
model through the engine, so the observer that gathers them belongs to the engine, not to
one method.
"""

from __future__ import annotations

import torch
from torch import nn


class InputNormAccumulator:
    """Per-layer running sum of squared input activations, one value per input feature.

    An `engine.sequential.Observer`: pass it to `BlockContext.collect`; `sums[name][j]` is
    then `sum_t X_tj^2` over every token the layer saw.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        squared = inputs.float().pow(2).sum(dim=0)
        if name in self.sums:
            self.sums[name] += squared
        else:
            self.sums[name] = squared
