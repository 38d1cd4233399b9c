"""Integer activations quantized at inference, simulated: pure tensor math, no modules.

INT8 W8A8 checkpoints (`w8a8`) tell vLLM to quantize each Linear's input *dynamically per
token*: every token (row of the input) gets its own scale from its own largest magnitude and
is rounded to int8 codes before the integer matmul. A model measured with float inputs would
flatter the scheme, so the step registers this round trip with
`engine.activations.quantize_inputs` and every later forward sees int8 inputs.

The scale is compressed-tensors' own, `max|x| / 127.5` (half the code range), codes clamped
to [-128, 127]: what stock transformers computes when it reloads the checkpoint (a test
reloads in a fresh process and gets the evaluated logits exactly) and what llm-compressor
measures its W8A8 with. vLLM's kernel divides by 127 instead; the two differ by at most one
rounding step of the largest value of a token.
"""

from __future__ import annotations

import torch

from compressors.ops.int_grid import code_range


def quantize_tokens(inputs: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """`inputs [..., features]` after a symmetric per-token int round trip, in their dtype.

    Computed in float32 (the kernels' scale arithmetic); an all-zero token stays zero.
    """
    qmin, qmax = code_range(bits)
    values = inputs.to(torch.float32)
    peak = values.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(peak > 0, peak / ((qmax - qmin) / 2), torch.ones_like(peak))
    codes = torch.clamp(torch.round(values / scale), qmin, qmax)
    return (codes * scale).to(inputs.dtype)


def dynamic_token_quantizer(bits: int = 8):
    """A `engine.activations.Quantizer` (inputs, static scale) -> inputs for dynamic
    per-token int quantization: the static scale is unused (there is none)."""

    def quantize(inputs: torch.Tensor, _scale: torch.Tensor | None) -> torch.Tensor:
        return quantize_tokens(inputs, bits)

    return quantize
