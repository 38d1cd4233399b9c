"""The `quantization` section an `awq` step writes: the weight-grid quantizers' keys (from the
RTN or GPTQ pass that rounded the scaled weights), each tensor's precision at inference, and
what AWQ's search chose where."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from compressors.engine.sections import InferencePrecision, QuantizationSection, ScaledFold
from compressors.report.schema import ReportSection


class SearchedFold(ScaledFold):
    ratio: float = Field(description="the exponent r of the scales chosen")
    duo_scaling: bool = Field(description="the scales divide by the weights' normalised "
                              "column means too")
    loss_unscaled: float = Field(
        description="the objective's mean squared output error with the layers rounded "
        "unscaled (s = 1), on the calibration tokens")
    loss_best: float = Field(description="the same with the chosen scales (never larger)")


class OutputClipping(ReportSection):
    """AWQ's clipping (`clip_search` with `quantizer: rtn`), over every quantized layer."""

    layers: int = Field(description="layers whose groups were clipped")
    shrunk_groups: float = Field(description="mean share of (row, group)s whose range was "
                                 "shrunk below min-max")
    error_minmax: float = Field(description="the groups' output error on the calibration "
                                "tokens rounded on min-max ranges (summed over layers)")
    error_clipped: float = Field(description="the same on the chosen ranges (never larger)")


class AWQSection(QuantizationSection):
    quantizer: str = Field(description="the step that rounded the scaled weights: rtn or gptq")
    grid_points: int = Field(description="points of the scale search per group of layers")
    scales: str = Field(description="the scale family searched: activations, duo or both")
    objective: str = Field(description="what the search minimised: module (the output of the "
                           "module holding the layers) or layers (the layers' own outputs)")
    precision: InferencePrecision
    folds: list[SearchedFold] = Field(description="every scale vector folded, in order")
    unscaled_layers: dict[str, str] = Field(
        description="quantized layers that kept scale 1 (no op before them can take a "
        "scale), with why")
    clipping: OutputClipping | None = Field(
        description="each group's range chosen by its output error on the calibration "
        "tokens after the scales (rtn with clip_search); None: the quantizer's own ranges")
    scaling_seconds: float = Field(description="wall time of the scale search "
                                   "(quantize_seconds: of the whole step)")
    quantizer_details: dict[str, Any] = Field(
        description="the keys the quantizer's own section adds (GPTQ: act order, dampening, "
        "Cholesky fallbacks, ...)")
