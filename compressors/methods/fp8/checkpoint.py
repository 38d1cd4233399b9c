"""FP8 weights in compressed-tensors' `float-quantized` format: the `CheckpointQuant` record
an `fp8` layer carries, and installing a layer's rounded weight.

The model computes with the dequantized weight (`code · scale`, what every loader of the
checkpoint reconstructs, `ops.float_quant`); saving recovers the `float8_e4m3fn` codes from it
(checked to dequantize to the very same values) and writes `weight` (FP8) and `weight_scale`
(the model's dtype: `[out, 1]` per channel, `[⌈out/128⌉, ⌈in/128⌉]` per block), as
llm-compressor does for FP8_DYNAMIC and FP8_BLOCK.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compressors.ops.float_quant import (
    FP8_BLOCK,
    Fp8Strategy,
    fp8_codes,
    fp8_dequantize,
    fp8_weight_scale,
)

FORMAT = "float-quantized"


@dataclass
class Fp8Quant:
    """An FP8 layer's record: its scales (on CPU, in the model's dtype) and their layout."""

    scale: torch.Tensor
    strategy: Fp8Strategy
    format: str = FORMAT

    def weight_args(self) -> Any:
        from compressed_tensors.quantization import QuantizationArgs

        block = [FP8_BLOCK, FP8_BLOCK] if self.strategy == "block" else None
        return QuantizationArgs(num_bits=8, type="float", symmetric=True, dynamic=False,
                                strategy=self.strategy, block_structure=block)

    def serialize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """`weight` (the FP8 codes) and `weight_scale`."""
        weight = weight.detach().cpu()
        codes = fp8_codes(weight, self.scale, self.strategy)
        if not torch.equal(fp8_dequantize(codes, self.scale, self.strategy), weight):
            raise ValueError("an FP8 layer's weight is off its grid (changed after quantizing)")
        return {"weight": codes, "weight_scale": self.scale.contiguous()}

    def bits_label(self) -> str:
        return "FP8"

    def bits_per_weight(self, rows: int, cols: int) -> float:
        """The codes plus the scales, per weight."""
        return 8 + self.scale.numel() * torch.finfo(self.scale.dtype).bits / (rows * cols)


def rounded(weight: torch.Tensor, strategy: Fp8Strategy) -> tuple[torch.Tensor, Fp8Quant]:
    """`weight` rounded to FP8 (dequantized, in its dtype) and its record."""
    scale = fp8_weight_scale(weight, strategy)
    values = fp8_dequantize(fp8_codes(weight, scale, strategy), scale, strategy)
    return values, Fp8Quant(scale.cpu(), strategy)
