"""How the goal-driven search uses W8A8 on one layer (`METHOD.search`).

One level, "int8": the layer's weights in int8 with one scale per output channel and its
inputs in int8 per token. The sensitivity pass rounds the weight to nearest on that grid (no
smoothing, float inputs: the activations' error is not in it, and SmoothQuant moves part of
it into the weights); the verification runs the step itself, activations quantized.
"""

from __future__ import annotations

import torch

from compressors.methods.w8a8.config import W8A8Config
from compressors.ops.int_grid import Grid, rtn_quantize
from compressors.recipe.per_layer import layer_selection, only_level

LEVEL = "int8"
SCALE_BYTES = 2  # one float16 scale per output channel


def layer_bytes(level: str, rows: int, cols: int, _dtype: str) -> float:
    """int8 codes plus one float16 scale per row."""
    if level != LEVEL:
        raise ValueError(f"w8a8: unknown level {level!r}")
    return rows * cols + rows * SCALE_BYTES


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    """Round-to-nearest int8 per output channel (symmetric, float16 scales)."""
    if level != LEVEL:
        raise ValueError(f"w8a8: unknown level {level!r}")
    return rtn_quantize(weight, Grid(8, -1), search=False).dense()


def step(choices: dict[str, str]) -> W8A8Config | None:
    """One w8a8 step on the layers at the allocation's level."""
    level = only_level(choices)
    if level is None:
        return None
    return W8A8Config(method="w8a8", **layer_selection(choices, level))
