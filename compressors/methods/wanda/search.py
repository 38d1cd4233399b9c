"""How the goal-driven search uses Wanda on one layer (`METHOD.search`): per-layer sparsity
levels in one step (`layer_sparsity`); its stand-in is its own row-wise mask."""

from __future__ import annotations

import torch

from compressors.methods.wanda.config import WandaConfig
from compressors.ops.masks import prune_rows
from compressors.recipe.per_layer import level_sparsity, sparsity_patterns


def perturb(weight: torch.Tensor, level: str, input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    return prune_rows(weight, level_sparsity(level), input_sq_norms)


def step(choices: dict[str, str]) -> WandaConfig | None:
    """One wanda step; the layers left dense get `sparsity` 0."""
    patterns = sparsity_patterns(choices)
    return WandaConfig(method="wanda", sparsity=0.0, layer_sparsity=patterns) if patterns \
        else None
