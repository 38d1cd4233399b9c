"""Integer weight grids shared by GPTQ and round-to-nearest: pure tensor math, no modules.

A layer's weight `W [out, in]` is cut into groups of `group_size` consecutive inputs (or one
group per row: per channel); each row of each group gets a scale `s` (and, asymmetric, a zero
point `z`), and each weight a code `q` in the signed range `[-2^(b-1), 2^(b-1) - 1]`, so that
`Ŵ = (q - z) · s`. This is exactly the layout of compressed-tensors' pack-quantized format
(int codes, `weight_scale [out, groups]`, `weight_zero_point [out, groups]`), so what is computed
here is what the checkpoint stores, code for code.

Zero is always on the grid: symmetric grids have `z = 0`, asymmetric ones widen their range to
include 0 and round `z` to an integer, so the code `q = z` dequantizes to exactly 0 and pruned
weights stay pruned.

Scales are rounded to the storage dtype (float16 by default) *before* codes are chosen, so the
codes fit the scales the checkpoint really holds. Min-max scales can be refined by a clipping
search: each candidate shrink factor `α` of the range is tried and, per row of each group, the
one with the least (optionally importance-weighted) squared error is kept. GPTQ weights the error
of input `j` by the Hessian diagonal `H_jj` (its contribution to `‖W X − Ŵ X‖²` when the other
inputs are left alone); round-to-nearest weights every input alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AUTO_MAX_GROUP = 128
MIN_AUTO_GROUP = 32  # below this, per-channel scales are used instead (vLLM's smallest group)
CLIP_FACTORS = 20  # candidates 1.0, 0.975, ... down to MIN_CLIP
MIN_CLIP = 0.55
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def code_range(bits: int) -> tuple[int, int]:
    """Signed integer codes of `bits` bits (compressed-tensors' int range)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def resolve_group_size(in_features: int, requested: int | None) -> int:
    """The group size one layer uses; -1 means one scale per output row (per channel).

    `None` (auto): 128 where it divides the width, else the largest power of two below 128
    that does (SmolLM2's 576 -> 64), and per channel when that would be under 32. An explicit
    size must divide the width: a group straddling the end of a row is what loaders reject.
    """
    if requested == -1:
        return -1
    if requested is None:
        size = AUTO_MAX_GROUP
        while size >= MIN_AUTO_GROUP and in_features % size:
            size //= 2
        return size if size >= MIN_AUTO_GROUP else -1
    if in_features % requested:
        raise ValueError(f"group_size: {requested} does not divide in_features {in_features}; "
                         "use a divisor, -1 (per channel) or leave it unset (auto)")
    return requested


def group_width(in_features: int, group_size: int) -> int:
    return in_features if group_size == -1 else group_size


@dataclass(frozen=True)
class Grid:
    """How one layer is quantized: bits, group size (resolved), symmetry, scale dtype, and
    the dtype its loader takes the product `(q − z) · s` in: the model's (transformers casts
    the stored scales first), or with `product_in_scale_dtype` the scale's own, then cast
    (compressed-tensors' `dequantize` on the stored tensors as they are: what transformers
    runs on expert matrices and on a checkpoint it decompresses while loading)."""

    bits: int
    group_size: int
    symmetric: bool = True
    scale_dtype: torch.dtype = torch.float16
    product_in_scale_dtype: bool = False

    @property
    def qmin(self) -> int:
        return code_range(self.bits)[0]

    @property
    def qmax(self) -> int:
        return code_range(self.bits)[1]

    def width(self, in_features: int) -> int:
        return group_width(in_features, self.group_size)


def _stored(scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales as the checkpoint stores them (rounded to `dtype`, never 0 or subnormal)."""
    tiny = torch.finfo(dtype).tiny
    return scale.clamp(min=tiny).to(dtype).to(torch.float32)


def grid_range(w: torch.Tensor, grid: Grid, shrink: float | torch.Tensor = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row `(low, high)` a grid of a group `w [rows, g]` spans, its range shrunk by
    `shrink`: `±max|w|` symmetric, `[min(w, 0), max(w, 0)]` asymmetric. Clamping `w` to a
    shrunk range and taking min-max params of the result gives the shrunk params exactly."""
    if grid.symmetric:
        peak = w.abs().amax(dim=1) * shrink
        return -peak, peak
    return w.amin(dim=1).clamp(max=0) * shrink, w.amax(dim=1).clamp(min=0) * shrink


def minmax_params(
    w: torch.Tensor, grid: Grid, shrink: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row `(scale, zero)` of a group `w [rows, g]`, its range shrunk by `shrink`."""
    low, high = grid_range(w, grid, shrink)
    if grid.symmetric:
        scale = _stored(high / grid.qmax, grid.scale_dtype)
        return scale, torch.zeros_like(scale)
    scale = _stored((high - low) / (grid.qmax - grid.qmin), grid.scale_dtype)
    zero = torch.clamp(torch.round(grid.qmin - low / scale), grid.qmin, grid.qmax)
    return scale, zero


def codes_of(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Nearest codes (as float) of `w [rows, k]` for per-row `scale`, `zero` `[rows]` or
    `[rows, k]`."""
    if scale.dim() == 1:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return torch.clamp(torch.round(w / scale) + zero, grid.qmin, grid.qmax)


def dequantized(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    if scale.dim() == 1:
        scale, zero = scale.unsqueeze(1), zero.unsqueeze(1)
    return (codes - zero) * scale


def group_params(
    w: torch.Tensor, grid: Grid, importance: torch.Tensor | None = None, search: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row `(scale, zero)` of a group `w [rows, g]`: min-max, or the clipping search.

    `importance [g]` weights each input's squared error (GPTQ: the Hessian diagonal); the
    search keeps, per row, the shrink factor with the least weighted error (α = 1, plain
    min-max, is a candidate, so the search is never worse than min-max on this measure).
    """
    weight = (importance if importance is not None else torch.ones(w.shape[1],
              device=w.device)).to(torch.float32).unsqueeze(0)
    return _weighted_group_params(w, grid, weight, search)


def _weighted_error(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, grid: Grid,
                    weight: torch.Tensor) -> torch.Tensor:
    q = dequantized(codes_of(w, scale, zero, grid), scale, zero)
    return ((w - q) ** 2 * weight).sum(dim=1)


@dataclass
class QuantizedWeight:
    """A layer's codes and their scales, in the checkpoint's layout."""

    codes: torch.Tensor  # int8 [out, in]
    scale: torch.Tensor  # float32 (values of `grid.scale_dtype`) [out, groups]
    zero: torch.Tensor  # int8 [out, groups]; all 0 when symmetric
    grid: Grid

    def dense(self) -> torch.Tensor:
        """`(q - z) · s` as float32 `[out, in]`."""
        width = self.grid.width(self.codes.shape[1])
        scale = self.scale.repeat_interleave(width, dim=1)
        zero = self.zero.to(torch.float32).repeat_interleave(width, dim=1)
        return (self.codes.to(torch.float32) - zero) * scale


def grouped(w: torch.Tensor, width: int) -> torch.Tensor:
    """`[rows, in]` -> `[rows · groups, width]`: every (row, group) as one row."""
    return w.reshape(w.shape[0] * (w.shape[1] // width), width)


def all_group_params(
    w: torch.Tensor, grid: Grid, importance: torch.Tensor | None = None, search: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(scale, zero)` `[rows, groups]` of every group of `w [rows, in]` at once."""
    rows, cols = w.shape
    width = grid.width(cols)
    imp = None if importance is None else importance.reshape(cols // width, width)
    if imp is None:
        scale, zero = group_params(grouped(w, width), grid, None, search)
        return scale.view(rows, -1), zero.view(rows, -1)
    # the importance differs per group: weight each (row, group) by its own group's
    weight = imp.unsqueeze(0).expand(rows, -1, -1).reshape(-1, width)
    scale, zero = _weighted_group_params(grouped(w, width), grid, weight, search)
    return scale.view(rows, -1), zero.view(rows, -1)


def _weighted_group_params(w: torch.Tensor, grid: Grid, weight: torch.Tensor, search: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    best_scale, best_zero = minmax_params(w, grid)
    if not search:
        return best_scale, best_zero
    best_err = _weighted_error(w, best_scale, best_zero, grid, weight)
    for shrink in torch.linspace(1.0, MIN_CLIP, CLIP_FACTORS)[1:].tolist():
        scale, zero = minmax_params(w, grid, shrink)
        err = _weighted_error(w, scale, zero, grid, weight)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def rtn_quantize(
    weight: torch.Tensor, grid: Grid, keep: torch.Tensor | None = None,
    importance: torch.Tensor | None = None, search: bool = True,
) -> QuantizedWeight:
    """Round every weight to the nearest code of its group's grid; `keep` False -> code `z`
    (exactly 0)."""
    w = weight.detach().to(torch.float32)
    rows, cols = w.shape
    width = grid.width(cols)
    scale, zero = all_group_params(w, grid, importance, search)
    codes = codes_of(grouped(w, width), scale.reshape(-1), zero.reshape(-1), grid).view(rows, cols)
    if keep is not None:
        codes = torch.where(keep, codes, zero.repeat_interleave(width, dim=1))
    return QuantizedWeight(codes.to(torch.int8), scale, zero.to(torch.int8), grid)


def relative_error(weight: torch.Tensor, approx: torch.Tensor,
                   hessian: torch.Tensor | None = None) -> float:
    """`‖W − Ŵ‖ / ‖W‖`, on the Hessian metric `tr(D H Dᵀ)` when `hessian` is given (how much
    of the layer's output energy on the calibration inputs the quantization changes)."""
    w = weight.to(torch.float32)
    diff = w - approx.to(torch.float32)
    if hessian is None:
        return float(torch.linalg.norm(diff) / torch.linalg.norm(w).clamp(min=1e-30))
    h = hessian.to(torch.float32)  # two float32 matmuls: a report figure, not an optimisation
    num = float(((diff @ h) * diff).sum(dtype=torch.float64))
    den = float(((w @ h) * w).sum(dtype=torch.float64))
    return (max(num, 0.0) / max(den, 1e-30)) ** 0.5


def bits_per_weight(grid: Grid, rows: int, cols: int) -> float:
    """Stored bits per weight: the codes plus each group's scale (and zero point)."""
    groups = cols // grid.width(cols)
    scale_bits = torch.finfo(grid.scale_dtype).bits
    extra = groups * rows * (scale_bits + (0 if grid.symmetric else grid.bits))
    return grid.bits + extra / (rows * cols)
