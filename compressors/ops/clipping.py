"""AWQ's weight clipping by output error: pure tensor math, no modules.

Round-to-nearest with min-max ranges spends a group's grid on its one or two largest weights;
shrinking the range (clipping those weights) gives the rest a finer grid. Which shrink is
best depends on what the layer's output loses, not on the weights alone: after AWQ's scales
the columns of salient channels are multiplied up, and a clip chosen by the weights' own
squared error cuts exactly those (on SmolLM2 it made AWQ + RTN worse than plain min-max,
28.80 against 27.59). So, as AWQ's own `auto_clip`, each `(row, group)` keeps the shrink
whose rounding changes the layer's output least on the calibration inputs:

    ‖ΔW_{r,g} X_g‖² = ΔW_{r,g} (X_g X_gᵀ) ΔW_{r,g}ᵀ

where `X_g` are the group's inputs over the calibration tokens: the group's diagonal block of
the inputs' Gram matrix (`width × width` per group, `in × width` per layer: a fraction of a
Hessian) holds everything the choice needs, exactly, up to the cross terms between groups that
rounding each group separately ignores anyway.

The chosen range is applied by clamping the weights to it: min-max params of the clamped
weights are the shrunk params exactly (`int_grid.grid_range`; in a 16-bit model up to the
bound's rounding to its dtype), so a min-max quantizer after this rounds on the chosen grid,
and zero stays inside every range (pruned weights stay 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.ops.int_grid import (
    CLIP_FACTORS,
    MIN_CLIP,
    Grid,
    codes_of,
    dequantized,
    grid_range,
    grouped,
    minmax_params,
)


def group_grams(x: torch.Tensor, width: int) -> torch.Tensor:
    """`X_g X_gᵀ` summed over the tokens `x [tokens, in]`, for each group `g` of `width`
    consecutive inputs (float32 `[groups, width, width]`)."""
    groups = x.to(torch.float32).reshape(x.shape[0], -1, width).transpose(0, 1)
    return groups.transpose(1, 2) @ groups


def rescaled_grams(grams: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The group Gram blocks of inputs divided by per-channel `scales` (what a layer reads
    once AWQ's scales are folded into the op before it)."""
    s = scales.to(grams.device, torch.float32).reshape(grams.shape[0], -1)
    return grams / (s.unsqueeze(2) * s.unsqueeze(1))


@dataclass(frozen=True)
class Clip:
    """What one layer's clipping did: its groups' output error (summed over the calibration
    tokens) rounded on min-max ranges and on the chosen ones, and the share of
    `(row, group)`s whose range was shrunk."""

    error_minmax: float
    error_clipped: float
    shrunk: float


def _clamped(flat: torch.Tensor, grid: Grid, shrink: float | torch.Tensor) -> torch.Tensor:
    """Each row of `flat [rows, width]` clamped to its range shrunk by `shrink`: what is
    rounded is the clamped weight (a symmetric grid's extra negative code is then out of
    reach, as it is for every weight a min-max quantizer sees)."""
    low, high = grid_range(flat, grid, shrink)
    return torch.clamp(flat, low.unsqueeze(1), high.unsqueeze(1))


def output_clip(weight: torch.Tensor, grid: Grid, grams: torch.Tensor
                ) -> tuple[torch.Tensor, Clip]:
    """`weight [out, in]` with each `(row, group)` clamped to the shrink of its range (20
    factors in [0.55, 1]) whose rounding on `grid` least changes the output on inputs with
    group Gram blocks `grams [groups, width, width]` (in `weight`'s dtype), and what that did;
    min-max (factor 1) wins ties, so a group no token reached keeps its range."""
    w = weight.detach().to(torch.float32)
    rows, cols = w.shape
    width = grid.width(cols)
    flat = grouped(w, width)
    gram = grams.to(w.device, torch.float32)
    best_error = best_shrink = first = None
    for shrink in torch.linspace(1.0, MIN_CLIP, CLIP_FACTORS).tolist():
        clamped = _clamped(flat, grid, shrink)
        scale, zero = minmax_params(clamped, grid)  # the shrunk range's, exactly
        diff = (dequantized(codes_of(clamped, scale, zero, grid), scale, zero) - flat)
        diff = diff.view(rows, -1, width).transpose(0, 1)  # [groups, rows, width]
        error = (torch.bmm(diff, gram) * diff).sum(dim=2).T.reshape(-1)
        if best_error is None:
            first, best_error = error, error
            best_shrink = torch.ones_like(error)
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_shrink = torch.where(better, torch.full_like(error, shrink), best_shrink)
    assert best_error is not None and best_shrink is not None and first is not None
    clamped = _clamped(flat, grid, best_shrink).view(rows, cols)
    return clamped.to(weight.dtype), Clip(float(first.sum(dtype=torch.float64)),
                                          float(best_error.sum(dtype=torch.float64)),
                                          float((best_shrink < 1).to(torch.float32).mean()))
