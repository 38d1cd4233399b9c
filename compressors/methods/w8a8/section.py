"""The `quantization` section a `w8a8` step writes: the weight-grid quantizers' keys (from the
GPTQ or RTN pass that rounded the int8 weights), each tensor's precision at inference, and
what SmoothQuant folded where."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compressors.engine.sections import InferencePrecision, QuantizationSection, ScaledFold


class SmoothedFold(ScaledFold):
    input_absmax_before: float = Field(
        description="the largest input magnitude of these layers on the calibration tokens, "
        "before smoothing")
    input_absmax_after: float = Field(
        description="the same after smoothing (the int8 activations' range to cover)")


class W8A8Section(QuantizationSection):
    quantizer: str = Field(description="the step that rounded the int8 weights: gptq or rtn")
    alpha: float = Field(description="SmoothQuant's strength")
    precision: InferencePrecision
    experts_precision: InferencePrecision | None = Field(
        None, description="mixture-of-experts expert matrices: int8 weights with 16-bit "
        "inputs (W8A16, pack-quantized: the form stock transformers loads experts in); absent "
        "without experts")
    smoothing: list[SmoothedFold] = Field(description="every scale vector folded, in order")
    unscaled_layers: dict[str, str] = Field(
        description="quantized layers that kept scale 1 (no op before them can take a "
        "scale), with why")
    smoothing_seconds: float = Field(description="wall time of the smoothing pass "
                                     "(quantize_seconds: of the whole step)")
    quantizer_details: dict[str, Any] = Field(
        description="the keys the quantizer's own section adds (GPTQ: act order, dampening, "
        "Cholesky fallbacks, ...)")
