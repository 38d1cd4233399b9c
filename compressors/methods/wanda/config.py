"""The `wanda` step's settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from compressors.recipe.fields import PruningConfig


class WandaConfig(PruningConfig):
    """Pruning by weights and activations; needs calibration text, no weight update."""

    method: Literal["wanda"] = "wanda"
