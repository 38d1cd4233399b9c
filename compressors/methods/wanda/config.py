"""The `wanda` step's settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import PruningConfig


class WandaConfig(PruningConfig):
    """Pruning by weights and activations; needs calibration text, no weight update."""

    method: Literal["wanda"] = "wanda"


METHOD = Method(
    "wanda", WandaConfig,
    "prune by |W|·‖X‖₂ within each output row (Sun et al. 2023); unstructured or N:M",
    experts="handled",
    needs_calibration=True, blockwise=True,
    search=SearchSpace(
        ("s0.25", "s0.5"), mixed_levels=True, needs_input_norms=True,
        perturb="compressors.methods.wanda.search:perturb",
        step="compressors.methods.wanda.search:step",
        note="non-uniform per-layer sparsity (layer_sparsity); zeros are stored, so the "
             "checkpoint does not shrink"))
