"""FP8 E4M3 and NVFP4 (FP4 E2M1) quantization: pure tensor math, no modules, no hooks.

Every function computes what compressed-tensors computes for the same scheme, in the same
dtypes and the same order of operations, so the weights a step installs are the weights its
loaders reconstruct and the activations a simulated forward sees are the ones its own
fake-quantized forward sees (tests pin each function against the library's):

- FP8 weights: one scale per output channel, per 128×128 block (zero-padded at the edges) or
  per tensor, `scale = absmax / 448` in the weight's dtype (a zero scale becomes that dtype's
  epsilon); codes are `clamp(w / scale, ±448)` cast to `float8_e4m3fn` (round to nearest
  even), dequantized as `code · scale` in the scale's dtype.
- FP8 activations: the same rounding with a scale per token (or per group of 128 values of a
  token, the block scheme's activations) taken from the token itself at inference, or one
  static scale measured on calibration inputs.
- NVFP4: values on the E2M1 grid {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6} in groups of 16, each
  group's scale stored in FP8 E4M3 relative to one float32 global scale per tensor
  (`global = 448 · 6 / absmax`, so the largest group scale lands on FP8's largest value):
  `group scale = fp8(global · absmax_group / 6)` (0 becomes 0.125), and a weight is
  `fp4(w / (group scale / global))`. compressed-tensors dequantizes in float32 and hands back
  bfloat16, whatever the model's dtype; `nvfp4_dequantize` does the same. Activations (the
  W4A4 form) get their group scales dynamically and a static global scale from calibration.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
FP4_MAX = 6.0
FP8_BLOCK = 128  # the 128×128 weight blocks (and 128-value activation groups) of FP8_BLOCK
NVFP4_GROUP = 16
# compressed-tensors' epsilon for a zero scale stored in FP8 (a group of zeros, e.g. pruned)
FP8_SCALE_EPS = 0.125
NVFP4_DEQUANT_DTYPE = torch.bfloat16  # what compressed-tensors' NVFP4 decompression returns

Fp8Strategy = Literal["channel", "block", "tensor"]


def _nonzero(scale: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Zero scales (all-zero rows, blocks, tokens) replaced by a small one, as the library
    does, so that dividing by them is defined and zeros stay zero."""
    value = torch.finfo(scale.dtype).eps if eps is None else eps
    return torch.where(scale == 0, torch.tensor(value, dtype=scale.dtype, device=scale.device),
                       scale)


def fp8_scale(absmax: torch.Tensor) -> torch.Tensor:
    """The FP8 scale of values whose largest magnitude is `absmax` (in its dtype)."""
    return _nonzero(absmax / FP8_MAX)


# ---- FP8 weights ---------------------------------------------------------------------------

def _blocks(weight: torch.Tensor, block: int) -> torch.Tensor:
    """`[out, in]` zero-padded to whole blocks, as `[row blocks, col blocks, block·block]`."""
    rows, cols = weight.shape
    padded = F.pad(weight, (0, -cols % block, 0, -rows % block))
    row_blocks, col_blocks = padded.shape[0] // block, padded.shape[1] // block
    return padded.reshape(row_blocks, block, col_blocks, block).transpose(1, 2).flatten(2)


def fp8_weight_scale(weight: torch.Tensor, strategy: Fp8Strategy,
                     block: int = FP8_BLOCK) -> torch.Tensor:
    """The scales of a weight `[out, in]`, in its dtype: `[out, 1]` per channel,
    `[⌈out/block⌉, ⌈in/block⌉]` per block, `[1]` per tensor."""
    if strategy == "channel":
        return fp8_scale(weight.abs().amax(dim=1, keepdim=True))
    if strategy == "block":
        return fp8_scale(_blocks(weight, block).abs().amax(dim=-1))
    return fp8_scale(weight.abs().amax().reshape(1))


def expand_scale(scale: torch.Tensor, shape: torch.Size | tuple[int, int],
                 strategy: Fp8Strategy, block: int = FP8_BLOCK) -> torch.Tensor:
    """One scale per weight of a `[out, in]` matrix, from its `strategy`'s scales."""
    rows, cols = shape
    if strategy == "block":
        return scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return scale.reshape(-1, 1).expand(rows, cols)


def fp8_codes(weight: torch.Tensor, scale: torch.Tensor, strategy: Fp8Strategy,
              block: int = FP8_BLOCK) -> torch.Tensor:
    """The `float8_e4m3fn` codes of `weight` for its scales (computed in the weight's dtype,
    as the library does: a bfloat16 model's quotient is rounded to bfloat16 first)."""
    full = expand_scale(scale.to(weight.dtype), weight.shape, strategy, block)
    return torch.div(weight, full).clamp_(-FP8_MAX, FP8_MAX).to(FP8)


def fp8_dequantize(codes: torch.Tensor, scale: torch.Tensor, strategy: Fp8Strategy,
                   block: int = FP8_BLOCK) -> torch.Tensor:
    """`code · scale` in the scale's dtype: what the loaders reconstruct."""
    return codes.to(scale.dtype).mul_(expand_scale(scale, codes.shape, strategy, block))


# ---- FP8 activations -----------------------------------------------------------------------

def _fake_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    quantized = torch.clamp(x / scale, -FP8_MAX, FP8_MAX).to(FP8).to(x.dtype)
    return quantized.to(scale.dtype) * scale


def fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Dynamic FP8 of activations `[..., in]`: each token's own scale (`absmax / 448`)."""
    return _fake_fp8(x, fp8_scale(x.abs().amax(dim=-1, keepdim=True)))


def fp8_per_token_group(x: torch.Tensor, group: int = FP8_BLOCK) -> torch.Tensor:
    """Dynamic FP8 with a scale per `group` consecutive values of each token (the activations
    of block-quantized FP8 weights); `in` must be a multiple of `group`."""
    groups = x.unflatten(-1, (-1, group))
    return _fake_fp8(groups, fp8_scale(groups.abs().amax(dim=-1, keepdim=True))).flatten(-2)


def fp8_per_tensor(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Static FP8 of activations with one scale measured on calibration inputs."""
    return _fake_fp8(x, scale.to(x.dtype).reshape(()))


# ---- FP4 E2M1 (NVFP4) ----------------------------------------------------------------------

def fp4_round(x: torch.Tensor) -> torch.Tensor:
    """The nearest E2M1 value of each element (|x| ≤ 6 assumed), ties to the even mantissa as
    the library rounds them: 0.25 → 0, 0.75 → 1, 1.25 → 1, 1.75 → 2, 2.5 → 2, 3.5 → 4,
    5 → 4."""
    # E2M1's spacing is 0.5 below 2, 1 below 4, 2 up to 6: rounding |x| / spacing half to
    # even (torch.round's rule) is that tie rule, and multiplying back is exact; a few float
    # passes instead of comparing against every grid point (bit-identical, tested)
    a = x.abs()
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0)).to(x.dtype)
    return torch.round(a / step).mul_(step).mul_(torch.sign(x))


def nvfp4_global_scale(absmax: torch.Tensor) -> torch.Tensor:
    """The float32 `[1]` global scale of a tensor (or of layers sharing one) whose largest
    magnitude is `absmax`: `448 · 6 / absmax`, computed in `absmax`'s dtype; 1 where that is
    not finite (all zeros)."""
    tiny = torch.finfo(absmax.dtype).tiny
    scale = (FP8_MAX * FP4_MAX) / absmax.clamp(min=tiny)
    return torch.nan_to_num(scale, nan=1.0, posinf=1.0, neginf=1.0).to(torch.float32).reshape(1)


def nvfp4_group_scales(groups: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """The FP8 scale of each group `[..., groups, 16]` (float8_e4m3fn `[..., groups]`), relative
    to `global_scale`."""
    scales = global_scale * (groups.abs().amax(dim=-1) / FP4_MAX)
    finfo = torch.finfo(FP8)
    scales = torch.clamp(scales, finfo.min, finfo.max).to(FP8).to(scales.dtype)
    return _nonzero(scales, FP8_SCALE_EPS).to(FP8)


def _effective(scales: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """A group's scale in the weight's units (float32): `fp8 scale / global`."""
    return (scales.to(torch.float32) / global_scale).unsqueeze(-1)


def nvfp4_values(weight: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor
                 ) -> torch.Tensor:
    """The E2M1 values (float32 `[out, in]`) of a weight for its group scales."""
    groups = weight.unflatten(-1, (-1, NVFP4_GROUP))
    scaled = torch.clamp(groups / _effective(scales, global_scale), -FP4_MAX, FP4_MAX)
    return fp4_round(scaled).flatten(-2)


def nvfp4_dequantize(values: torch.Tensor, scales: torch.Tensor, global_scale: torch.Tensor
                     ) -> torch.Tensor:
    """`value · scale / global` in float32, handed back in bfloat16 as the library's
    decompression does (the loader then casts it to the model's dtype)."""
    groups = values.to(torch.float32).unflatten(-1, (-1, NVFP4_GROUP))
    return (groups * _effective(scales, global_scale)).flatten(-2).to(NVFP4_DEQUANT_DTYPE)


def nvfp4_activations(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """Dynamic NVFP4 of activations `[..., in]`: each group of 16 values of a token gets its
    FP8 scale from its own values, relative to the static `global_scale` from calibration."""
    groups = x.unflatten(-1, (-1, NVFP4_GROUP))
    global_scale = global_scale.to(x.device)
    scales = nvfp4_group_scales(groups, global_scale)
    effective = _effective(scales, global_scale)
    values = fp4_round(torch.clamp(groups / effective, -FP4_MAX, FP4_MAX))
    return (values.to(effective.dtype) * effective).flatten(-2).to(x.dtype)
