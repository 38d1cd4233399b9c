"""FP8 (`fp8`): E4M3 weights by round-to-nearest, activations quantized at inference.

Weights: each selected layer's weight is rounded to FP8 with one scale per output channel or
per 128×128 block (`ops.float_quant`, compressed-tensors' own arithmetic) and the dequantized
values are installed in place, so the model computes with exactly what the checkpoint's
loaders reconstruct; pruned zeros stay zero (checked).

Activations: every quantized layer's input is then fake-quantized on every forward
(`engine.activations.quantize_inputs`) as vLLM quantizes it: dynamically per token (per group
of 128 values with block weights), or, `activations: static`, with one scale per layer from
the largest magnitude its inputs reach on the calibration windows. The dynamic forms are
data-free and walk the blocks without inputs (`run_blockwise`); the static form runs the
sequential engine on the calibration text (which the step reads itself: the registry declares
`fp8` calibration-free, as its default is), every token through every expert unless the
recipe says `calibration.experts: routed` (`engine.schemes.input_peaks`), and block k's
inputs come from blocks 0..k-1 already quantized, activations included, as at inference.
"""

from __future__ import annotations

import time
from functools import partial

import torch
from torch import nn

from compressors.engine.activations import InputQuant, Quantizer, quantize_inputs
from compressors.engine.context import StepContext, StepResult
from compressors.engine.modules import in_features
from compressors.engine.quantization import keep_mask, skipped_layers, target_layers
from compressors.engine.schemes import SchemeRecord, input_peaks, precision
from compressors.engine.sequential import BlockContext, run_blockwise, run_sequential
from compressors.methods.fp8.checkpoint import FORMAT, Fp8Quant, rounded
from compressors.methods.fp8.config import Fp8Config
from compressors.methods.fp8.section import Fp8Section
from compressors.ops.float_quant import (
    FP8_BLOCK,
    fp8_per_tensor,
    fp8_per_token,
    fp8_per_token_group,
    fp8_scale,
)


def inputs_scheme(config: Fp8Config) -> tuple[InputQuant, Quantizer]:
    """How the layers' inputs are quantized at inference, and the round trip simulating it."""
    if config.activations == "static":
        return (InputQuant("float", 8, "tensor", dynamic=False),
                lambda x, scale: fp8_per_tensor(x, scale))
    if config.weights == "block":
        return (InputQuant("float", 8, "group", group_size=FP8_BLOCK),
                lambda x, _scale: fp8_per_token_group(x))
    return InputQuant("float", 8, "token"), lambda x, _scale: fp8_per_token(x)


def _check_widths(targets: dict[str, nn.Module], config: Fp8Config, device: str) -> None:
    """Refused shapes fail the job here, naming the layer, before anything changes."""
    for name, layer in targets.items():
        error = config.layer_error(name, layer.weight.shape[0], in_features(layer), device)
        if error:
            raise ValueError(error)


def _block_note(targets: dict[str, nn.Module], config: Fp8Config) -> str | None:
    if config.weights != "block":
        return None
    ragged = [n for n, layer in targets.items() if layer.weight.shape[0] % FP8_BLOCK]
    if not ragged:
        return None
    return (f"{len(ragged)} layers (e.g. {ragged[0]}) have out_features that are not a "
            f"multiple of {FP8_BLOCK}: transformers loads them (edge blocks are padded), but "
            "vLLM refuses a fused layer (q/k/v, gate/up) whose parts are not whole blocks")


def run(model: nn.Module, config: Fp8Config, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    _check_widths(targets, config, context.device.type)
    spec, quantizer = inputs_scheme(config)
    record = SchemeRecord(config.method)
    records: dict[str, Fp8Quant] = {}
    scales: dict[str, torch.Tensor] = {}
    thin_experts: dict[str, int] = {}
    began = time.perf_counter()

    def quantize(layers: dict[str, nn.Module]) -> None:
        for name, layer in layers.items():
            keep = keep_mask(layer, name, context)
            records[name] = record.quantize(name, layer, keep,
                                            partial(rounded, strategy=config.weights))

    @torch.no_grad()
    def dynamic_block(block: BlockContext) -> None:
        quantize(block.layers)

    @torch.no_grad()
    def static_block(block: BlockContext) -> None:
        peaks, thin = input_peaks(block, context)
        thin_experts.update(thin)
        quantize(block.layers)
        found = {name: fp8_scale(peaks[name]) for name in block.layers}
        scales.update(found)
        # the next blocks are calibrated on inputs quantized as at inference
        quantize_inputs(model, block.layers, spec, quantizer, found)

    context.progress(0.0, f"rounding {len(targets)} layers to {config.label}")
    if config.activations == "static":
        run_sequential(model, context.calibration_tokens(), targets, static_block,
                       context.progress)
    else:
        run_blockwise(model, targets, dynamic_block, context.progress)
        quantize_inputs(model, targets, spec, quantizer)
    seconds = time.perf_counter() - began
    weights_args = next(iter(records.values())).weight_args()
    inputs = "static per-tensor" if config.activations == "static" else (
        "dynamic per token group of 128" if config.weights == "block" else "dynamic per token")
    section = record.section(
        Fp8Section, seconds, skipped_layers(model, targets), scheme=config.label,
        format=f"compressed-tensors {FORMAT} (FP8 W8A8, {inputs} activations)",
        precision=precision(weights_args, spec.args()), note=_block_note(targets, config),
        weights=config.weights, activations=config.activations,
        input_scales={n: float(s) for n, s in scales.items()} or None,
        experts_without_enough_tokens=thin_experts or None)
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds,
               "mean_relative_error": section.relative_error.mean}
    return StepResult(details=details, section=section, charts=[record.chart()])
