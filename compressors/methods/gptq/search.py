"""How the goal-driven search uses GPTQ on one layer (`METHOD.search`).

Levels "int8" (one scale per output channel: within 0.06% of fp32 on SmolLM2) and "int4" (the
step's auto group size), one `bits` per step like bitsandbytes. The sensitivity pass rounds
to nearest on the same grid: what GPTQ starts from before its error feedback lowers the
error, so an upper bound on it; the verification runs real GPTQ.
"""

from __future__ import annotations

import torch

from compressors.methods.gptq.config import GPTQConfig
from compressors.ops.int_grid import Grid, resolve_group_size, rtn_quantize
from compressors.recipe.per_layer import layer_selection, only_level

BITS = {"int8": 8, "int4": 4}
SCALE_BYTES = 2  # one float16 scale per group (symmetric: no zero point)


def bits(level: str) -> int:
    if level not in BITS:
        raise ValueError(f"gptq: unknown level {level!r}")
    return BITS[level]


def group_size(level: str, cols: int) -> int:
    """The group size the search's steps use at `level` (-1: per output channel)."""
    return -1 if level == "int8" else resolve_group_size(cols, None)


def layer_bytes(level: str, rows: int, cols: int, _dtype: str) -> float:
    """The codes plus one float16 scale per group of each row."""
    size = group_size(level, cols)
    groups = 1 if size == -1 else cols // size
    return rows * cols * bits(level) / 8 + rows * groups * SCALE_BYTES


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    """Round-to-nearest on the grid the search's step writes (symmetric, float16 scales)."""
    grid = Grid(bits(level), group_size(level, weight.shape[1]))
    return rtn_quantize(weight, grid, search=False).dense()


def step(choices: dict[str, str]) -> GPTQConfig | None:
    """One GPTQ step on the layers at the allocation's level: int8 per channel, int4 in
    auto-sized groups."""
    level = only_level(choices)
    if level is None:
        return None
    per_channel = {"group_size": -1} if level == "int8" else {}
    return GPTQConfig(method="gptq", bits=bits(level), **per_channel,
                      **layer_selection(choices, level))
