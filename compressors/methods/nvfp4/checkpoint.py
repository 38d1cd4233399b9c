"""NVFP4 weights in compressed-tensors' `nvfp4-pack-quantized` format: the `CheckpointQuant`
record an `nvfp4` layer carries, and installing a layer's rounded weight.

The model computes with the dequantized weight (`value · scale / global`, in bfloat16 as the
library's decompression hands it back, then in the model's dtype: what the loaders
reconstruct, `ops.float_quant`); saving recovers the E2M1 values from it (checked to
dequantize to the very same weight), packs two per byte with compressed-tensors' own packer
and writes `weight_packed` (uint8 `[out, in/2]`), `weight_scale` (FP8 E4M3 `[out, in/16]`) and
`weight_global_scale` (float32 `[1]`), as llm-compressor does for NVFP4A16 and NVFP4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compressors.ops.float_quant import (
    FP8,
    NVFP4_GROUP,
    nvfp4_dequantize,
    nvfp4_group_scales,
    nvfp4_values,
)

FORMAT = "nvfp4-pack-quantized"


@dataclass
class NVFP4Quant:
    """An NVFP4 layer's record: its FP8 group scales and float32 global scale, on CPU."""

    scale: torch.Tensor
    global_scale: torch.Tensor
    format: str = FORMAT

    def weight_args(self) -> Any:
        from compressed_tensors.quantization import QuantizationArgs

        return QuantizationArgs(num_bits=4, type="float", symmetric=True, dynamic=False,
                                strategy="tensor_group", group_size=NVFP4_GROUP,
                                scale_dtype=FP8)

    def serialize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """`weight_packed`, `weight_scale`, `weight_global_scale`."""
        from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8

        weight = weight.detach().cpu()
        values = nvfp4_values(weight, self.scale, self.global_scale)
        again = nvfp4_dequantize(values, self.scale, self.global_scale).to(weight.dtype)
        if not torch.equal(again, weight):
            raise ValueError("an NVFP4 layer's weight is off its grid (changed after "
                             "quantizing)")
        return {"weight_packed": pack_fp4_to_uint8(values), "weight_scale": self.scale,
                "weight_global_scale": self.global_scale.clone()}

    def bits_label(self) -> str:
        return "NVFP4"

    def bits_per_weight(self, rows: int, cols: int) -> float:
        """The 4-bit values, one FP8 scale per 16, one float32 global scale."""
        return 4 + 8 / NVFP4_GROUP + 32 / (rows * cols)


def rounded(weight: torch.Tensor, global_scale: torch.Tensor
            ) -> tuple[torch.Tensor, NVFP4Quant]:
    """`weight` rounded to NVFP4 under `global_scale` (dequantized, in its dtype) and its
    record."""
    global_scale = global_scale.to(weight.device)
    scales = nvfp4_group_scales(weight.unflatten(-1, (-1, NVFP4_GROUP)), global_scale)
    values = nvfp4_dequantize(nvfp4_values(weight, scales, global_scale), scales, global_scale)
    return values.to(weight.dtype), NVFP4Quant(scales.cpu(), global_scale.cpu().clone())
