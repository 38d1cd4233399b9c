"""The report pieces that code several methods share fills (torch-free).

A training run's summary (`TrainLog.summary`, in the low-rank and PERP sections), the
weight-grid quantizers' section (`QuantRecord.section`, written by `gptq` and `rtn` under
`quantization`) and the serving schemes' one (`SchemeRecord.section`: `fp8`, `nvfp4`) are
built by the engine, so they are declared beside it rather than in one method's folder; a
method adds its own keys by subclassing (`gptq`'s section).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.report.schema import ReportSection


class TrainSummary(ReportSection):
    """What the report shows of a training run (`engine.training.TrainLog`)."""

    steps: int = Field(description="optimizer steps taken")
    tokens: int = Field(description="tokens trained on, over all steps")
    seconds: float = Field(description="wall time of the training loop")
    trainable_parameters: int = Field(description="parameters the optimizer updated")
    loss_first: dict[str, float] | None = Field(
        description="each loss term's value at the first step, by term (`total` included); "
        "null when no step ran")
    loss_last: dict[str, float] | None = Field(
        description="each loss term's value at the last step, by term; null when no step ran")


class SegmentLoss(ReportSection):
    """One part of a run trained in parts (PERP's reconstruct objective: one block)."""

    block: str = Field(description="the transformer block's module name")
    first_loss: float = Field(description="its total loss at its first step")
    last_loss: float = Field(description="its total loss at its last step")


class RelativeError(ReportSection):
    """How far the quantized weights are from the originals, per layer and overall."""

    metric: Literal["hessian", "frobenius"] = Field(
        description="hessian: ‖ΔW X‖ / ‖W X‖ on the calibration inputs (gptq); frobenius: "
        "‖ΔW‖ / ‖W‖ (rtn)")
    mean: float = Field(description="mean over the quantized layers")
    max: float = Field(description="the worst layer's")
    per_layer: dict[str, float] = Field(description="by layer name")


class QuantizationSection(ReportSection):
    """The `quantization` section of an integer weight-grid quantizer (`gptq`, `rtn`)."""

    scheme: str = Field(description="the step's short label, e.g. `gptq w4 g64`")
    method: str = Field(description="the step that quantized: gptq or rtn")
    bits: int = Field(description="bits per weight code")
    group_size: int | Literal["auto"] = Field(
        description="as the recipe asked: inputs per scale, -1 one scale per output channel, "
        "auto: chosen per layer (see group_sizes)")
    group_sizes: dict[str, int] = Field(
        description="layers quantized with each group size, by size (as a string)")
    symmetric: bool = Field(description="zero point 0")
    clip_search: bool = Field(description="scales chosen by searching shrink factors")
    scale_dtype: str = Field(description="dtype the scales are stored in")
    format: str = Field(description="the checkpoint format and its scheme, e.g. "
                        "`compressed-tensors pack-quantized (W4A16)`")
    quantized_layers: int = Field(description="layers quantized")
    bits_per_weight: float = Field(
        description="stored bits per quantized weight, scales included, averaged over the "
        "quantized weights")
    quantized_weights: int = Field(description="weights in the quantized layers")
    relative_error: RelativeError
    zeros_before: int = Field(description="weights an earlier pruning step left at zero")
    zeros_kept: int = Field(description="of those, still exactly zero (all of them, checked)")
    quantize_seconds: float = Field(description="wall time of the quantization")
    note: str | None = Field(
        None, description="how the checkpoint differs from a plain run (a streamed run "
        "publishes dense weights holding the quantized values); absent otherwise")
    skipped_layers: list[str] = Field(
        description="Linear layers of the model left unquantized (unselected, embeddings, "
        "the LM head)")


class InferencePrecision(ReportSection):
    """Each tensor's precision when the checkpoint runs: what the report's perplexity was
    measured with (activations simulated on CPU the way the scheme quantizes them), and the
    GPU generation vLLM's kernels for it need (`io.scheme_notes`)."""

    weights: str = Field(description="the stored weights and their scales")
    input_activations: str = Field(
        description="each quantized layer's inputs at inference (16-bit: not quantized)")
    kv_cache: str = Field(description="the attention cache")
    gpu: str = Field(description="the GPU generation vLLM's kernels for this scheme need")


class SchemeSection(ReportSection):
    """The `quantization` section of a quantizer that writes a serving scheme of
    compressed-tensors (`fp8`, `nvfp4`); each adds its own keys by subclassing."""

    scheme: str = Field(description="the step's short label, e.g. `fp8 channel dynamic`")
    method: str = Field(description="the step that quantized")
    format: str = Field(description="the checkpoint format and its scheme, e.g. "
                        "`compressed-tensors float-quantized (FP8 W8A8)`")
    precision: InferencePrecision
    quantized_layers: int = Field(description="layers quantized")
    quantized_weights: int = Field(description="weights in the quantized layers")
    bits_per_weight: float = Field(
        description="stored bits per quantized weight, scales included, averaged over the "
        "quantized weights")
    relative_error: RelativeError
    zeros_before: int = Field(description="weights an earlier pruning step left at zero")
    zeros_kept: int = Field(description="of those, still exactly zero (all of them, checked)")
    quantize_seconds: float = Field(description="wall time of the quantization")
    note: str | None = Field(
        None, description="what a user should know about serving this checkpoint; absent "
        "when nothing")
    skipped_layers: list[str] = Field(
        description="Linear layers of the model left unquantized (unselected, embeddings, "
        "the LM head)")


class ScaledFold(ReportSection):
    """One vector of per-input-channel scales folded into the op before the layers that read
    its output (`engine.folding`: SmoothQuant's and AWQ's), so the model's function is
    unchanged before quantizing."""

    predecessor: str = Field(description="the op whose output channels were divided by the "
                             "scales (a norm, or a Linear's rows)")
    consumers: list[str] = Field(description="the layers whose weight columns were "
                                 "multiplied by them (they share one scale vector)")
    scale_min: float = Field(description="the smallest scale")
    scale_max: float = Field(description="the largest scale")
