"""How the goal-driven search uses SparseGPT on one layer (`METHOD.search`): per-layer
sparsity levels in one step (`layer_sparsity`). Its stand-in is Wanda's row-wise mask, with
no reconstruction: an upper bound on SparseGPT's error at the same sparsity."""

from __future__ import annotations

import torch

from compressors.methods.sparsegpt.config import SparseGPTConfig
from compressors.ops.masks import prune_rows
from compressors.recipe.per_layer import level_sparsity, sparsity_patterns


def perturb(weight: torch.Tensor, level: str, input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    return prune_rows(weight, level_sparsity(level), input_sq_norms)


def step(choices: dict[str, str]) -> SparseGPTConfig | None:
    """One sparsegpt step; the layers left dense get `sparsity` 0."""
    patterns = sparsity_patterns(choices)
    return SparseGPTConfig(method="sparsegpt", sparsity=0.0, layer_sparsity=patterns) \
        if patterns else None
