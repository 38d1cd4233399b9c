"""The INT8 W8A8 layer record of the compressed-tensors checkpoint (`int-quantized`).

vLLM's INT8 W8A8 kernels take the weight as plain int8 codes (`weight` int8 `[out, in]`) with
one scale per output channel (`weight_scale [out, 1]`), the layout compressed-tensors'
int-quantized compressor writes and reads; no packing (the codes are already one byte) and no
zero point (symmetric). The grid and scales are the ones GPTQ or round-to-nearest chose
(`io.compressed_tensors.LayerQuant`); only the stored form and the serving label differ, and
the writer adds the layer's `input_activations` (int8, dynamic per token) from
`engine.activations`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.io.compressed_tensors import LayerQuant, weight_codes

INT_FORMAT = "int-quantized"


@dataclass
class Int8Quant(LayerQuant):
    """An int8 per-channel grid stored unpacked, for W8A8."""

    format: str = INT_FORMAT

    def serialize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """`weight` (int8 codes, checked to dequantize to the weight exactly) and
        `weight_scale`."""
        return {"weight": weight_codes(weight, self).contiguous(),
                "weight_scale": self.scale.contiguous()}

    def bits_label(self) -> str:
        return "W8A8"

    @classmethod
    def of(cls, record: LayerQuant) -> Int8Quant:
        if record.grid.bits != 8 or record.grid.group_size != -1 or not record.grid.symmetric:
            raise ValueError("w8a8: int-quantized layers hold symmetric int8 per-channel grids")
        return cls(record.scale, record.zero, record.grid)
