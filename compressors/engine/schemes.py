"""What the serving-scheme quantizers (`fp8`, `nvfp4`) share around their own math: the
per-layer record (pruned zeros checked, error, stored bits), the report's `quantization`
section with each tensor's precision at inference, and its error chart.

Each method rounds a layer with its `ops` math, installs the dequantized weight in place (what
the checkpoint's loaders reconstruct) with its `CheckpointQuant` record for the writer, and
hands both weights here; choosing layers and the keep-masks of earlier pruning are
`engine.quantization`'s, shared with `gptq` and `rtn`. A scheme with a static activation scale
(FP8 static, NVFP4's W4A4 global scale) reads each layer's largest input magnitude on the
calibration windows with `input_peaks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from compressors.engine.context import StepContext
from compressors.engine.experts import starved
from compressors.engine.modules import in_features
from compressors.engine.quantization import check_zeros
from compressors.engine.sections import InferencePrecision, RelativeError, SchemeSection
from compressors.engine.sequential import BlockContext
from compressors.io.compressed_tensors import QUANT_ATTR
from compressors.io.scheme_notes import KV_CACHE, gpu_needs, inputs_precision, weights_precision
from compressors.ops.int_grid import relative_error
from compressors.report.charts import layer_chart
from compressors.report.schema import Chart

Section = TypeVar("Section", bound=SchemeSection)


class StoredBits(Protocol):
    """A layer's checkpoint record, as far as the report needs it."""

    def bits_per_weight(self, rows: int, cols: int) -> float: ...


Record = TypeVar("Record", bound=StoredBits)


def precision(weights: Any, inputs: Any | None) -> InferencePrecision:
    """Each tensor's precision at inference, from the scheme's compressed-tensors arguments
    (weights, input activations or None): the words the model card uses too."""
    return InferencePrecision(weights=weights_precision(weights),
                              input_activations=inputs_precision(inputs), kv_cache=KV_CACHE,
                              gpu=gpu_needs(weights, inputs))


def input_peaks(block: BlockContext, context: StepContext
                ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Each layer's largest input magnitude (a 0-d tensor in the model's dtype, on CPU) over
    the block's calibration inputs, and the expert matrices routed too few tokens for one of
    their own (`engine.experts.starved`, with the tokens they saw): those take the largest
    peak of the block's other expert matrices of their width, an upper bound on what they
    will see. Every token goes through every expert unless the recipe says
    `calibration.experts: routed`: a static scale from a few routed tokens would clip the
    rest."""
    peaks: dict[str, torch.Tensor] = {}

    def observe(name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        peak = inputs.abs().amax().cpu()
        peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak

    tokens = block.collect(observe, all_experts=context.calibration.all_experts(True))
    thin = starved(block.layers, tokens)
    for name, layer in block.layers.items():
        if name not in thin:
            continue
        peers = [peaks[n] for n, other in block.layers.items()
                 if n not in thin and n in peaks and in_features(other) == in_features(layer)]
        own = peaks.get(name, torch.zeros((), dtype=layer.weight.dtype))
        peaks[name] = torch.stack([own, *peers]).amax()
    return peaks, thin


class SchemeRecord:
    """Per-layer facts noted while each block is loaded, then the section and chart."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.errors: dict[str, float] = {}
        self.bits: dict[str, tuple[float, int]] = {}
        self.zeros_before = self.zeros_kept = 0

    def quantize(self, name: str, layer: nn.Module, keep: torch.Tensor | None,
                 rounding: Callable[[torch.Tensor], tuple[torch.Tensor, Record]]) -> Record:
        """Round one layer with `rounding` (the method's own: from the weight, its pruned
        entries zeroed, the rounded weight in the weight's dtype and the checkpoint's record),
        note the error against the weight as it was, install the rounded one in place and
        attach the record. Rounding out of place spares a float32 copy of every weight."""
        weight = layer.weight.data
        unpruned = weight if keep is None else weight.masked_fill(~keep.to(weight.device), 0)
        rounded, record = rounding(unpruned)
        before, kept = check_zeros(self.method, name, rounded, keep)
        self.zeros_before += before
        self.zeros_kept += kept
        self.errors[name] = relative_error(weight, rounded)
        self.bits[name] = (record.bits_per_weight(*weight.shape), weight.numel())
        weight.copy_(rounded)
        setattr(layer, QUANT_ATTR, record)
        return record

    def section(self, kind: type[Section], seconds: float, skipped: list[str],
                **fields: Any) -> Section:
        """The step's `quantization` section: the recorded fields, plus `fields` (the
        scheme's label, format, precision and what the method's own section type adds)."""
        total = sum(n for _, n in self.bits.values())
        errors = list(self.errors.values())
        return kind(
            method=self.method, quantized_layers=len(self.errors), quantized_weights=total,
            bits_per_weight=sum(b * n for b, n in self.bits.values()) / total,
            relative_error=RelativeError(metric="frobenius", mean=sum(errors) / len(errors),
                                         max=max(errors), per_layer=self.errors),
            zeros_before=self.zeros_before, zeros_kept=self.zeros_kept,
            quantize_seconds=seconds, skipped_layers=skipped, **fields)

    def chart(self) -> Chart:
        return layer_chart("quantization-error",
                           "Relative quantization error per layer (‖ΔW‖ / ‖W‖)", self.errors,
                           "relative error")
