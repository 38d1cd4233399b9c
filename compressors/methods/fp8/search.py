"""How the goal-driven search uses FP8 on one layer (`METHOD.search`).

One level, "fp8": E4M3 weights with one scale per output channel (FP8_DYNAMIC, what vLLM
serves on Ada/Hopper), one `fp8` step per allocation. The sensitivity pass rounds the weights
only; the activations' share of the error shows in the verification, which runs the step
(its evaluation quantizes the activations as vLLM will).
"""

from __future__ import annotations

import torch

from compressors.methods.fp8.config import Fp8Config
from compressors.ops.float_quant import fp8_codes, fp8_dequantize, fp8_weight_scale
from compressors.recipe.per_layer import layer_selection, only_level

LEVELS = ("fp8",)
SCALE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # one scale per row, model dtype


def _level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"fp8: unknown level {level!r}")


def layer_bytes(level: str, rows: int, cols: int, dtype: str) -> float:
    """One byte per weight plus one scale per output row, in the model's dtype."""
    _level(level)
    return rows * cols + rows * SCALE_BYTES[dtype]


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    """The weight the step installs (per channel FP8)."""
    _level(level)
    scale = fp8_weight_scale(weight, "channel")
    return fp8_dequantize(fp8_codes(weight, scale, "channel"), scale, "channel")


def step(choices: dict[str, str]) -> Fp8Config | None:
    """One `fp8` step (per channel, dynamic activations) on the layers at the level."""
    level = only_level(choices)
    if level is None:
        return None
    _level(level)
    return Fp8Config(method="fp8", **layer_selection(choices, level))
