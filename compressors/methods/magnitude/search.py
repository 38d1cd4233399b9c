"""How the goal-driven search uses magnitude pruning on one layer (`METHOD.search`):
per-layer sparsity levels in one step (`layer_sparsity`); its stand-in is the row-wise
magnitude mask."""

from __future__ import annotations

import torch

from compressors.methods.magnitude.config import MagnitudeConfig
from compressors.ops.masks import prune_rows
from compressors.recipe.per_layer import level_sparsity, sparsity_patterns


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    return prune_rows(weight, level_sparsity(level))


def step(choices: dict[str, str]) -> MagnitudeConfig | None:
    """One magnitude step; the layers left dense get `sparsity` 0."""
    patterns = sparsity_patterns(choices)
    return MagnitudeConfig(method="magnitude", sparsity=0.0, layer_sparsity=patterns) \
        if patterns else None
