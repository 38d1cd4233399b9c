"""Per-input-channel scales that move quantization difficulty between a layer's inputs and its
weights (SmoothQuant, AWQ): pure tensor math, no modules.

A Linear layer computes the same function as `(W·diag(s)) (diag(s)⁻¹ x)` for any positive `s`.
Folding `diag(s)⁻¹` into the op that produced `x` (`engine.folding` finds it) makes that
rewrite free at inference, and the choice of `s` decides what the quantizer sees:

- SmoothQuant (Xiao et al. 2023) quantizes activations too; a few input channels carry
  outliers 100x the rest, which a per-token int8 scale cannot hold. `s_j = max|X_j|^α /
  max|W_:,j|^(1−α)` divides the outlier channels down and multiplies the matching weight
  columns up, splitting the range between the two (α = 0.8 by default, as llm-compressor's
  W8A8 example).
- AWQ (Lin et al. 2024) quantizes weights only; the weights of channels with large
  activations matter most, and scaling them up before rounding shrinks their relative rounding
  error. `s = mean|X_j|^r` (optionally divided by the weights' normalised column means,
  `mean|Ŵ_:,j|^(1−r)`, "duo scaling"), normalised so that `√(max s · min s) = 1`; the exponent
  `r` is searched on a grid per group of layers by the output error of the quantized layers.
"""

from __future__ import annotations

from typing import Literal

import torch

from compressors.ops.int_grid import Grid, rtn_quantize

MIN_SMOOTH_SCALE = 1e-5  # SmoothQuant's floor on a scale (a channel never divided to nothing)
AWQ_FLOOR = 1e-4  # the floor on AWQ's activation and weight means before the power
ScaleForm = Literal["activations", "duo", "both"]


def smoothquant_scales(input_absmax: torch.Tensor, weight_absmax: torch.Tensor,
                       alpha: float) -> torch.Tensor:
    """`s_j = max|X_j|^α / max|W_:,j|^(1−α)` (float32 `[in]`).

    `input_absmax [in]`: each input channel's largest magnitude on the calibration tokens;
    `weight_absmax [in]`: each column's largest magnitude over every layer reading those
    inputs. A channel no calibration token reached, or whose weights are all zero, keeps
    scale 1: its ratio says nothing, and folding an extreme scale into it would blow it up the
    first time it fires at inference.
    """
    x = input_absmax.to(torch.float32)
    w = weight_absmax.to(torch.float32)
    scales = x.clamp(min=MIN_SMOOTH_SCALE).pow(alpha) / w.clamp(min=MIN_SMOOTH_SCALE).pow(
        1 - alpha)
    scales = torch.where((x > 0) & (w > 0), scales, torch.ones_like(scales))
    return scales.clamp(min=MIN_SMOOTH_SCALE)


def column_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    """`max |W_:,j|` over the rows of every `[out, in]` weight (float32 `[in]`)."""
    return torch.stack([w.detach().abs().amax(dim=0).to(torch.float32) for w in weights]
                       ).amax(dim=0)


def normalised_column_means(weights: list[torch.Tensor], width: int) -> torch.Tensor:
    """Each input column's mean of `|W|` normalised within its quantization group (each
    `(row, group)`'s largest magnitude is 1), over the rows of every weight: how large a
    column is where the quantizer sees it (float32 `[in]`; AWQ's duo scaling)."""
    total, rows = None, 0
    for weight in weights:
        w = weight.detach().to(torch.float32).abs()
        out, cols = w.shape
        chunks = w.reshape(out, cols // width, width)
        chunks = chunks / (chunks.amax(dim=2, keepdim=True) + 1e-6)
        column_sum = chunks.reshape(out, cols).sum(dim=0)
        total = column_sum if total is None else total + column_sum
        rows += out
    assert total is not None
    return total / rows


def awq_scales(input_mean: torch.Tensor, weight_mean: torch.Tensor | None,
               ratio: float) -> torch.Tensor:
    """AWQ's scales at exponent `ratio` (float32 `[in]`): `mean|X|^r`, or with `weight_mean`
    (duo scaling) `mean|X|^r / (mean|Ŵ|^(1−r) + 1e-4)`, floored at 1e-4 and normalised so
    that the geometric mean of the largest and smallest scale is 1; r = 0 without weight means
    is the identity (every scale 1)."""
    x = input_mean.to(torch.float32)
    if weight_mean is None:
        scales = x.pow(ratio).clamp(min=AWQ_FLOOR)
    else:
        scales = (x.pow(ratio) / (weight_mean.to(torch.float32).pow(1 - ratio) + AWQ_FLOOR)
                  ).clamp(min=AWQ_FLOOR)
    scales = scales / (scales.max() * scales.min()).sqrt()
    return torch.where(torch.isfinite(scales), scales, torch.ones_like(scales))


def search_points(points: int, form: ScaleForm) -> list[tuple[float, bool]]:
    """The (exponent, duo scaling) pairs AWQ's grid search tries, exponents evenly spaced in
    [0, 1]. The first is always (0, False), no scaling at all, so the search never ends worse
    than the unscaled layers on its own measure. `both`: half the points with duo scaling,
    half without (llm-compressor's `duo_scaling="both"`)."""
    if points < 2:
        raise ValueError("AWQ's grid needs at least 2 points")
    if form == "both":
        half = max(2, points // 2)
        pairs = [(i / (half - 1), duo) for i in range(half) for duo in (False, True)]
    elif form == "activations":
        pairs = [(i / (points - 1), False) for i in range(points)]
    else:
        pairs = [(0.0, False)] + [(i / (points - 2), True) for i in range(points - 1)]
    return list(dict.fromkeys(pairs))


def scaled_round_trip(weight: torch.Tensor, scales: torch.Tensor, grid: Grid) -> torch.Tensor:
    """`Q(W·diag(s)) · diag(s)⁻¹` (float32): what a layer computes on its *unscaled* inputs
    once `s` is folded and the scaled weight rounded to nearest on `grid` (min-max scales,
    the search's cheap stand-in for the final quantizer)."""
    scaled = weight.detach().to(torch.float32) * scales
    return rtn_quantize(scaled, grid, search=False).dense() / scales


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """`‖(Ŵ − W) X‖²` summed over the calibration tokens, exactly, from the inputs' Gram
    matrix `XᵀX [in, in]` (float32): `tr(ΔW · XᵀX · ΔWᵀ)`, one `out × in²` product instead of
    a pass over the tokens."""
    diff = approx.to(torch.float32) - weight.to(torch.float32)
    return float(((diff @ gram) * diff).sum(dtype=torch.float64))


def divide_outputs(weight: torch.Tensor, bias: torch.Tensor | None,
                   scales: torch.Tensor) -> None:
    """Divide an op's output channels by `scales` in place: a norm's weight (and bias)
    entries (1-D), or a Linear's weight rows (and bias)."""
    s = scales.to(weight.device, torch.float32)
    shaped = s if weight.dim() == 1 else s.view(-1, *([1] * (weight.dim() - 1)))
    weight.copy_((weight.to(torch.float32) / shaped).to(weight.dtype))
    if bias is not None:
        bias.copy_((bias.to(torch.float32) / s).to(bias.dtype))


def multiply_inputs(weight: torch.Tensor, scales: torch.Tensor) -> None:
    """Multiply a `[out, in]` weight's columns by `scales` in place."""
    s = scales.to(weight.device, torch.float32)
    weight.copy_((weight.to(torch.float32) * s).to(weight.dtype))
