"""The `quantization` section a `quantize` (bitsandbytes) step writes (torch-free)."""

from __future__ import annotations

from pydantic import Field

from compressors.report.schema import ReportSection

LORC_NOTE = ("the factors add a dense low-rank term: zeros of the stored weights are not "
             "zeros of the corrected weights")


class LorcSection(ReportSection):
    """The low-rank error compensation (LoRC) added on top of the quantized weights."""

    rank: int = Field(description="rank of every layer's correction")
    layers: int = Field(description="layers corrected")
    factor_dtype: str = Field(description="dtype the factors are stored in")
    extra_parameters: int = Field(description="parameters the factors add")
    extra_bytes: int = Field(description="bytes the factors add to the checkpoint")
    mean_relative_error_before: float = Field(
        description="‖W − Q(W)‖ / ‖W‖, mean over the layers, without the correction")
    mean_relative_error_after: float = Field(description="the same with the correction")
    note: str = Field(description="what the correction means for sparsity")


class Footprint(ReportSection):
    before: int = Field(description="bytes the weights took in memory before quantizing")
    after: int = Field(description="bytes they take after")


class QuantizeSection(ReportSection):
    scheme: str = Field(description="the scheme's label: int8, nf4, fp4 (+ double quant)")
    bits: int = Field(description="bits per weight code: 8 or 4")
    quantized_layers: int = Field(description="layers quantized")
    skipped_layers: list[str] = Field(description="Linear layers left in full precision")
    compute: str = Field(description="what the matmul really runs in on this device")
    zeros_before: int = Field(description="exact zeros in the quantized layers' weights before")
    zeros_kept: int = Field(description="of those, still exact zeros once dequantized")
    zeros_after: int = Field(description="exact zeros in the dequantized weights")
    lorc: LorcSection | None = Field(None, description="with lorc_rank only")
    quantize_seconds: float = Field(description="wall time of quantizing (and LoRC)")
    footprint_bytes: Footprint
