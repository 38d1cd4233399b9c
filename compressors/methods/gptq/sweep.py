"""GPTQ's column sweep (Frantar et al., 2022): pure tensor math, no modules, no hooks.

Given a weight `W [out, in]` and the inverse-Hessian Cholesky factor `U` of its layer
(`ops.hessian`, shared with SparseGPT), columns are quantized one at a time, left to right in
the factor's order, and each column's error `e = (w_q − ŵ_q) / U_qq` is spread over the columns
not yet quantized (`W[:, q:] −= e ⊗ U[q, q:]`): the optimal-brain-surgeon update that keeps
`‖W X − Ŵ X‖²` least. Updates inside a block of `blocksize` columns are immediate, the rest are
applied once per block (lazy batching).

Group scales are chosen when a group's first column comes up, from the weights as updated so
far (a group never straddles a block: the block is a multiple of the group). With activation
order (`factor.order`) the columns are visited by decreasing Hessian diagonal, which scatters a
group's columns over the sweep; scales are then *static*: chosen for every group before the
sweep from the original weights (the "static groups" trick), so group `k` is still inputs
`[k·g, (k+1)·g)` in the stored layout and the checkpoint needs no permutation (`g_idx`).

Weights whose keep-mask is False (pruned by an earlier step, dead inputs) get code `z`, which
dequantizes to exactly 0, and their error is compensated like any other.
"""

from __future__ import annotations

import torch

from compressors.ops.hessian import HessianFactor, one_thread
from compressors.ops.int_grid import (
    Grid,
    QuantizedWeight,
    all_group_params,
    group_params,
)


def _sweep_block(
    w1: torch.Tensor, u1: torch.Tensor, codes1: torch.Tensor, scale_of: torch.Tensor,
    zero_of: torch.Tensor, keep1: torch.Tensor | None, grid: Grid,
) -> torch.Tensor:
    """Quantize the columns of one block in place (`w1` ends as the dequantized values);
    returns the scaled errors `[rows, cols]`. `scale_of`/`zero_of` are per column here."""
    errors = torch.zeros_like(w1)
    for i in range(w1.shape[1]):
        column = w1[:, i]
        scale, zero = scale_of[:, i], zero_of[:, i]
        q = torch.clamp(torch.round(column / scale) + zero, grid.qmin, grid.qmax)
        if keep1 is not None:
            q = torch.where(keep1[:, i], q, zero)
        codes1[:, i] = q
        err = torch.div(column - (q - zero) * scale, u1[i, i], out=errors[:, i])
        w1[:, i:].addr_(err, u1[i, i:], alpha=-1.0)
    return errors


def gptq_quantize(
    weight: torch.Tensor, factor: HessianFactor, grid: Grid, keep: torch.Tensor | None = None,
    importance: torch.Tensor | None = None, search: bool = True, blocksize: int = 128,
) -> tuple[QuantizedWeight, float]:
    """Quantize `weight [out, in]`; returns (codes and scales in the stored layout, OBS loss).

    `keep [out, in]` (bool): False forces the code of exact zero. `importance [in]` weights the
    clipping search's error (the Hessian diagonal, in input order).
    """
    rows, cols = weight.shape
    if factor.upper.shape != (cols, cols):
        raise ValueError(f"factor: shape {tuple(factor.upper.shape)} must be ({cols}, {cols})")
    order = factor.order
    w = weight.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    width = grid.width(cols)
    groups = cols // width
    scales = torch.zeros(rows, groups, device=w.device)
    zeros = torch.zeros(rows, groups, device=w.device)
    if order is not None:
        _static_params(w, factor, grid, importance, search, scales, zeros)
        w, keep = w[:, order], (keep[:, order] if keep is not None else None)
        importance = importance[order] if importance is not None else None
    group_of = (order if order is not None else torch.arange(cols, device=w.device)) // width
    w[:, factor.dead] = 0.0
    block = blocksize if width == cols else max(1, -(-blocksize // width)) * width
    codes = torch.empty(rows, cols, device=w.device)
    loss = 0.0
    with one_thread():
        for start in range(0, cols, block):
            end = min(start + block, cols)
            w1 = w[:, start:end].clone()
            if order is None:
                _dynamic_params(w, w1, start, end, grid, importance, search, scales, zeros)
            cols1 = group_of[start:end]
            errors = _sweep_block(w1, factor.upper[start:end, start:end], codes[:, start:end],
                                  scales[:, cols1], zeros[:, cols1],
                                  keep[:, start:end] if keep is not None else None, grid)
            loss += float(errors.pow(2).sum()) / 2
            w[:, end:] -= errors @ factor.upper[start:end, end:]
    if order is not None:
        restored = torch.empty_like(codes)
        restored[:, order] = codes
        codes = restored
    return QuantizedWeight(codes.to(torch.int8), scales, zeros.to(torch.int8), grid), loss


def _dynamic_params(
    w: torch.Tensor, w1: torch.Tensor, start: int, end: int, grid: Grid,
    importance: torch.Tensor | None, search: bool, scales: torch.Tensor, zeros: torch.Tensor,
) -> None:
    """Scales of the groups starting in `[start, end)`, from the weights updated so far."""
    cols = w.shape[1]
    width = grid.width(cols)
    for first in range(start, end):
        if first % width:
            continue
        part = w1[:, first - start : first - start + width] if width != cols else w
        imp = importance[first : first + width] if importance is not None else None
        scale, zero = group_params(part, grid, imp, search)
        scales[:, first // width], zeros[:, first // width] = scale, zero


def _static_params(
    w: torch.Tensor, factor: HessianFactor, grid: Grid, importance: torch.Tensor | None,
    search: bool, scales: torch.Tensor, zeros: torch.Tensor,
) -> None:
    """Every group's scales from the original weights (act order: static groups)."""
    original = w.clone()
    assert factor.order is not None
    original[:, factor.order[factor.dead]] = 0.0
    scale, zero = all_group_params(original, grid, importance, search)
    scales.copy_(scale)
    zeros.copy_(zero)
