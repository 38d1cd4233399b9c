"""INT8 W8A8 (`w8a8`): SmoothQuant on the sequential engine, then int8 weights and activations.

1. Smoothing, block by block (`run_sequential`): each layer's input channels' largest
   magnitudes on the calibration tokens, then per op that feeds layers (`engine.folding`
   measures which) `s_j = max|X_j|^α / max|W_j|^(1−α)` (`ops.smoothing`), folded into that op
   and its readers. The model computes the same function, so the blocks after see the inputs
   they always saw.
2. Weights: the `gptq` (default) or `rtn` step, through the registry (`engine.rounding`), int8
   with one scale per output channel, on the smoothed model. The layers' inputs are
   registered as int8 per token (`engine.activations`, `ops.int_activations`) *before* it, so
   GPTQ's later blocks see inputs that went through int8 activations as at inference.
3. Each layer's record becomes an int-quantized one (`checkpoint.Int8Quant`): int8 codes,
   per-channel scales, `input_activations` int8 dynamic per token; the evaluation after the
   step runs with the activations quantized.

Expert matrices of a mixture-of-experts block keep scale 1 (their inputs come from a norm
shared by every expert and the router, so no expert can get a scale of its own: listed under
`unscaled_layers`) and 16-bit inputs: int8 per-channel weights, W8A16, stored pack-quantized
in the checkpoint's experts group. Stock transformers loads a checkpoint's experts only packed
(or FP8), not as int-quantized int8 tensors, so W8A8 experts would publish a checkpoint that
does not load; the section states the experts' own precision.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from compressors.engine.activations import InputQuant, quantize_inputs
from compressors.engine.context import StepContext, StepResult
from compressors.engine.folding import FoldFinder, apply_fold, submodule, unscaled_layers
from compressors.engine.layers import ExpertLayer
from compressors.engine.quantization import skipped_layers, target_layers
from compressors.engine.rounding import merged_section, round_weights
from compressors.engine.schemes import precision
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.io.compressed_tensors import FORMAT_NAME, QUANT_ATTR, ct_args
from compressors.methods.w8a8.checkpoint import INT_FORMAT, Int8Quant
from compressors.methods.w8a8.config import W8A8Config
from compressors.methods.w8a8.section import SmoothedFold, W8A8Section
from compressors.ops.int_activations import dynamic_token_quantizer
from compressors.ops.int_grid import Grid
from compressors.ops.smoothing import column_absmax, smoothquant_scales
from compressors.report.schema import Chart, Series

INPUTS = InputQuant("int", 8, "token")
SMOOTHING_SHARE = 0.2  # of the step's progress bar (GPTQ's pass is the rest)


def smooth(model: nn.Module, targets: dict[str, nn.Module], alpha: float,
           context: StepContext) -> tuple[list[SmoothedFold], dict[str, str]]:
    """SmoothQuant's scales folded block by block; returns the folds and the targets that
    kept scale 1 (with why)."""
    finder = FoldFinder()
    folds: list[SmoothedFold] = []
    unscaled: dict[str, str] = {}

    @torch.no_grad()
    def smooth_block(block: BlockContext) -> None:
        found = finder.folds(block)
        unscaled.update(unscaled_layers(block.layers, found))
        watched = {next(c for c in f.consumers if c in block.layers): f for f in found}
        peaks: dict[str, torch.Tensor] = {}

        def observe(name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
            peak = inputs.abs().amax(dim=0).to(torch.float32)
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak

        BlockContext(block.index, block.name, block.block,
                     {n: block.layers[n] for n in watched}, block.inputs,
                     block.device).collect(observe)
        for name, fold in watched.items():
            weights = [submodule(block, c).weight.data for c in fold.consumers]
            scales = smoothquant_scales(peaks[name], column_absmax(weights), alpha)
            apply_fold(block, fold, scales)
            folds.append(SmoothedFold(
                predecessor=fold.predecessor, consumers=list(fold.consumers),
                scale_min=float(scales.min()), scale_max=float(scales.max()),
                input_absmax_before=float(peaks[name].max()),
                input_absmax_after=float((peaks[name] / scales.to(peaks[name].device)).max())))

    def progress(fraction: float, message: str) -> None:
        context.progress(SMOOTHING_SHARE * fraction, f"smoothing: {message}")

    run_sequential(model, context.calibration_tokens(), targets, smooth_block, progress)
    return folds, unscaled


def run(model: nn.Module, config: W8A8Config, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    began = time.perf_counter()
    context.progress(0.0, f"smoothing the inputs of {len(targets)} layers (alpha {config.alpha:g})")
    folds, unscaled = smooth(model, targets, config.alpha, context)
    smoothed = time.perf_counter() - began
    dense = {n: layer for n, layer in targets.items() if not isinstance(layer, ExpertLayer)}
    quantize_inputs(model, dense, INPUTS, dynamic_token_quantizer(8))
    fields = {"bits": 8, "group_size": -1, "include": config.include,
              "exclude": config.exclude}
    if config.quantizer == "gptq":
        fields["dampening"] = config.dampening
    inner = round_weights(model, config.quantizer, fields, context, SMOOTHING_SHARE)
    for layer in dense.values():
        setattr(layer, QUANT_ATTR, Int8Quant.of(getattr(layer, QUANT_ATTR)))
    seconds = time.perf_counter() - began
    weights = ct_args(Grid(8, -1))
    section = merged_section(
        W8A8Section, inner.section, scheme=config.label, method="w8a8",
        format=f"{FORMAT_NAME} {INT_FORMAT} (W8A8)", quantize_seconds=seconds,
        skipped_layers=skipped_layers(model, targets), quantizer=config.quantizer,
        alpha=config.alpha, precision=precision(weights, INPUTS.args()),
        experts_precision=precision(weights, None) if len(dense) < len(targets) else None,
        smoothing=folds, unscaled_layers=unscaled, smoothing_seconds=smoothed)
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "smoothed_layers": len(targets) - len(unscaled),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds}
    return StepResult(details=details, section=section,
                      charts=[*inner.charts, smoothing_chart(folds)])


def smoothing_chart(folds: list[SmoothedFold]) -> Chart:
    """Per scale vector, its layers' largest input magnitude before and after smoothing."""
    before = [(f.predecessor, f.input_absmax_before) for f in folds]
    after = [(f.predecessor, f.input_absmax_after) for f in folds]
    return Chart(id="smoothing-scales", kind="bar", log_y=True, x_label="op folded into",
                 y_label="largest input magnitude",
                 title="Largest input magnitude of the layers each scale vector feeds, before "
                       "and after SmoothQuant",
                 series=[Series(name="before", points=before), Series(name="after", points=after)])
