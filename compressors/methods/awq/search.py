"""How the goal-driven search uses AWQ on one layer (`METHOD.search`).

One level, "int4-awq": int4 weights in the step's auto-sized groups after AWQ's scales. The
sensitivity pass rounds the *unscaled* weight to nearest on that grid, an upper bound on the
error AWQ's scales leave (the search's first point is no scaling); the verification runs the
step itself.
"""

from __future__ import annotations

import torch

from compressors.methods.awq.config import AWQConfig
from compressors.ops.int_grid import Grid, resolve_group_size, rtn_quantize
from compressors.recipe.per_layer import layer_selection, only_level

LEVEL = "int4-awq"
SCALE_BYTES = 2  # one float16 scale per group (symmetric: no zero point)


def _check(level: str) -> None:
    if level != LEVEL:
        raise ValueError(f"awq: unknown level {level!r}")


def layer_bytes(level: str, rows: int, cols: int, _dtype: str) -> float:
    """4-bit codes plus one float16 scale per group of each row."""
    _check(level)
    size = resolve_group_size(cols, None)
    groups = 1 if size == -1 else cols // size
    return rows * cols / 2 + rows * groups * SCALE_BYTES


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    """Round-to-nearest int4 on the step's grid, without AWQ's scales."""
    _check(level)
    grid = Grid(4, resolve_group_size(weight.shape[1], None))
    return rtn_quantize(weight, grid, search=False).dense()


def step(choices: dict[str, str]) -> AWQConfig | None:
    """One awq step (int4, auto groups, RTN) on the layers at the allocation's level."""
    level = only_level(choices)
    if level is None:
        return None
    return AWQConfig(method="awq", **layer_selection(choices, level))
