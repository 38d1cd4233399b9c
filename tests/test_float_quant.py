"""FP8 and NVFP4 math (`ops.float_quant`) pinned bit for bit against compressed-tensors' own
scale computation, compression, decompression and fake-quantized forward, in float32 and
bfloat16, on shapes that are not whole blocks and with all-zero rows and groups."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
from compressed_tensors.quantization import QuantizationScheme
from compressed_tensors.quantization.lifecycle.forward import fake_quantize
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
from compressed_tensors.quantization.utils import (
    calculate_qparams,
    compute_dynamic_scales_and_zp,
    generate_gparam,
)

from compressors.ops import float_quant as fq

DTYPES = [torch.float32, torch.bfloat16]


def _weight(dtype: torch.dtype, rows: int = 200, cols: int = 320) -> torch.Tensor:
    """Columns spanning four decades (so scales differ a lot), a few all-zero rows."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 1, cols)
    weight[:3] = 0
    return weight.to(dtype)


def _inputs(dtype: torch.dtype, width: int = 320) -> torch.Tensor:
    x = torch.randn(2, 7, width, generator=torch.Generator().manual_seed(1)) * 3
    x[0, 1] = 0  # an all-zero token
    return x.to(dtype)


def _scheme(name: str) -> QuantizationScheme:
    return QuantizationScheme(targets=["Linear"], **PRESET_SCHEMES[name])


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_channel_weights_match_the_library(dtype):
    weight = _weight(dtype)
    args = PRESET_SCHEMES["FP8_DYNAMIC"]["weights"]
    theirs, _ = calculate_qparams(weight.amin(1, keepdim=True), weight.amax(1, keepdim=True), args)
    scale = fq.fp8_weight_scale(weight, "channel")
    assert scale.dtype == theirs.dtype == dtype and torch.equal(scale, theirs)
    compressed = FloatQuantizationCompressor.compress({"weight": weight, "weight_scale": scale},
                                                      _scheme("FP8_DYNAMIC"))
    codes = fq.fp8_codes(weight, scale, "channel")
    assert codes.dtype == torch.float8_e4m3fn
    assert torch.equal(_bits(compressed["weight"]), _bits(codes))
    loaded = FloatQuantizationCompressor.decompress(compressed, _scheme("FP8_DYNAMIC"))["weight"]
    ours = fq.fp8_dequantize(codes, scale, "channel")
    assert ours.dtype == loaded.dtype and torch.equal(ours, loaded)
    assert bool((ours[:3] == 0).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_block_weights_match_the_library_on_ragged_edges(dtype):
    weight = _weight(dtype)  # 200 x 320: the last row and column blocks are partial
    scale = fq.fp8_weight_scale(weight, "block")
    assert scale.shape == (2, 3)
    padded = torch.nn.functional.pad(weight, (0, 64, 0, 56))
    blocks = padded.reshape(2, 128, 3, 128).transpose(1, 2).flatten(-2)
    theirs, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1),
                                  PRESET_SCHEMES["FP8_BLOCK"]["weights"])
    assert torch.equal(scale, theirs)
    compressed = FloatQuantizationCompressor.compress({"weight": weight, "weight_scale": scale},
                                                      _scheme("FP8_BLOCK"))
    codes = fq.fp8_codes(weight, scale, "block")
    assert torch.equal(_bits(compressed["weight"]), _bits(codes))
    loaded = FloatQuantizationCompressor.decompress(compressed, _scheme("FP8_BLOCK"))["weight"]
    assert torch.equal(fq.fp8_dequantize(codes, scale, "block"), loaded)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_activations_match_the_library_forward(dtype):
    x = _inputs(dtype, 384)
    for preset, ours in (("FP8_DYNAMIC", fq.fp8_per_token(x)),
                         ("FP8_BLOCK", fq.fp8_per_token_group(x))):
        args = PRESET_SCHEMES[preset]["input_activations"]
        scale, _ = compute_dynamic_scales_and_zp(x, args, None)
        assert torch.equal(fake_quantize(x, scale, None, args), ours), preset
    args = PRESET_SCHEMES["FP8"]["input_activations"]  # static per tensor
    static, _ = calculate_qparams(x.amin().reshape(1), x.amax().reshape(1), args)
    assert torch.equal(static, fq.fp8_scale(x.abs().amax()).reshape(1))
    assert torch.equal(fake_quantize(x, static, None, args), fq.fp8_per_tensor(x, static))
    assert bool((fq.fp8_per_token(x)[0, 1] == 0).all())


def test_fp4_rounding_ties_go_to_the_even_mantissa():
    x = torch.tensor([0.0, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, -0.75, -2.5, 6.0])
    expected = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -1.0, -2.0, 6.0])
    assert torch.equal(fq.fp4_round(x), expected)
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    dense = torch.linspace(-6, 6, 4801)
    assert torch.equal(fq.fp4_round(dense), cast_to_fp4(dense.clone()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_weights_match_the_library(dtype):
    weight = _weight(dtype)
    absmax = weight.abs().amax()
    global_scale = fq.nvfp4_global_scale(absmax)
    assert torch.equal(global_scale, generate_gparam(-absmax.reshape(1), absmax.reshape(1)))
    groups = weight.unflatten(-1, (-1, 16))
    args = PRESET_SCHEMES["NVFP4A16"]["weights"]
    theirs, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args,
                                  global_scale=global_scale)
    scales = fq.nvfp4_group_scales(groups, global_scale)
    assert scales.dtype == torch.float8_e4m3fn
    assert torch.equal(_bits(theirs.to(torch.float8_e4m3fn)), _bits(scales))
    compressed = NVFP4PackedCompressor.compress(
        {"weight": weight, "weight_scale": theirs, "weight_global_scale": global_scale},
        _scheme("NVFP4A16"))
    values = fq.nvfp4_values(weight, scales, global_scale)
    assert torch.equal(compressed["weight_packed"], pack_fp4_to_uint8(values))
    loaded = NVFP4PackedCompressor.decompress(compressed, _scheme("NVFP4A16"))["weight"]
    ours = fq.nvfp4_dequantize(values, scales, global_scale)
    assert ours.dtype == loaded.dtype == torch.bfloat16 and torch.equal(ours, loaded)
    assert bool((ours[:3] == 0).all())  # all-zero groups: scale 0.125, values 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_activations_match_the_library_forward(dtype):
    x = _inputs(dtype)
    global_scale = fq.nvfp4_global_scale(x.abs().amax())
    args = PRESET_SCHEMES["NVFP4"]["input_activations"]
    scale, _ = compute_dynamic_scales_and_zp(x, args, None, global_scale=global_scale)
    theirs = fake_quantize(x, scale, None, args, global_scale=global_scale)
    ours = fq.nvfp4_activations(x, global_scale)
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
