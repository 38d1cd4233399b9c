"""NVFP4 (`nvfp4`): FP4 E2M1 weights in groups of 16 by round-to-nearest, activations 16-bit
or NVFP4 at inference.

Weights: every group of 16 inputs of a row gets an FP8 scale relative to one float32 global
scale (`ops.float_quant`, compressed-tensors' own arithmetic), and the dequantized values are
installed in place, so the model computes with exactly what the checkpoint's loaders
reconstruct; pruned zeros stay zero (checked). Layers vLLM fuses into one matmul (q/k/v,
gate/up, an expert's gate/up) must share their global scale, or its kernels dequantize all
but one of them wrongly; llm-compressor keeps a table of such names. Here, without one: the
selected layers of one parent module with the same input width share it (they read the same
input, which is what fusing needs). A layer grouped with one vLLM does not fuse (Llama's
o_proj beside q/k/v) loses nothing that matters: the global scale only places the group scales
in FP8's range, and their relative precision is the same anywhere in it.

Activations (`activations: fp4`, W4A4): each quantized layer's input is fake-quantized on
every forward (`engine.activations.quantize_inputs`) as vLLM's kernels quantize it: a dynamic
FP8 scale per 16 values of a token under a static global scale per layer, `448 · 6 /` the
largest magnitude its inputs reach on the calibration windows (`engine.schemes.input_peaks`;
the step reads the calibration text itself: the registry declares `nvfp4` calibration-free,
as its weight-only default is). Block k is then calibrated on inputs from blocks 0..k-1
already quantized, activations included. The weight-only form is data-free and walks the
blocks without inputs (`run_blockwise`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from functools import partial

import torch
from torch import nn

from compressors.engine.activations import InputQuant, quantize_inputs
from compressors.engine.context import StepContext, StepResult
from compressors.engine.modules import in_features
from compressors.engine.quantization import keep_mask, skipped_layers, target_layers
from compressors.engine.schemes import SchemeRecord, input_peaks, precision
from compressors.engine.sequential import BlockContext, run_blockwise, run_sequential
from compressors.methods.nvfp4.checkpoint import FORMAT, NVFP4Quant, rounded
from compressors.methods.nvfp4.config import GROUP, NVFP4Config
from compressors.methods.nvfp4.section import NVFP4Section
from compressors.ops.float_quant import FP8, nvfp4_activations, nvfp4_global_scale

INPUTS = InputQuant("float", 4, "tensor_group", dynamic="local", group_size=GROUP,
                    scale_dtype=FP8)


def global_scale_groups(layers: dict[str, nn.Module]) -> list[list[str]]:
    """The layers that share one weight global scale: same parent module, same input width."""
    groups: dict[tuple[str, int], list[str]] = defaultdict(list)
    for name, layer in layers.items():
        groups[(name.rpartition(".")[0], in_features(layer))].append(name)
    return list(groups.values())


def _check_widths(targets: dict[str, nn.Module], config: NVFP4Config, device: str) -> None:
    """Refused shapes fail the job here, naming the layer, before anything changes."""
    for name, layer in targets.items():
        error = config.layer_error(name, layer.weight.shape[0], in_features(layer), device)
        if error:
            raise ValueError(error)


def run(model: nn.Module, config: NVFP4Config, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    _check_widths(targets, config, context.device.type)
    record = SchemeRecord(config.method)
    records: dict[str, NVFP4Quant] = {}
    shared: list[list[str]] = []
    input_scales: dict[str, torch.Tensor] = {}
    thin_experts: dict[str, int] = {}
    began = time.perf_counter()

    def quantize(layers: dict[str, nn.Module]) -> None:
        for group in global_scale_groups(layers):
            keeps = {name: keep_mask(layers[name], name, context) for name in group}
            peaks = [(layers[name].weight.data if keeps[name] is None else
                      layers[name].weight.data * keeps[name].to(layers[name].weight.device)
                      ).abs().amax() for name in group]
            global_scale = nvfp4_global_scale(torch.stack(peaks).amax())
            if len(group) > 1:
                shared.append(group)
            for name in group:
                records[name] = record.quantize(name, layers[name], keeps[name],
                                                partial(rounded, global_scale=global_scale))

    @torch.no_grad()
    def weights_only(block: BlockContext) -> None:
        quantize(block.layers)

    @torch.no_grad()
    def with_inputs(block: BlockContext) -> None:
        peaks, thin = input_peaks(block, context)
        thin_experts.update(thin)
        quantize(block.layers)
        found = {name: nvfp4_global_scale(peaks[name]) for name in block.layers}
        input_scales.update(found)
        # the next blocks are calibrated on inputs quantized as at inference
        quantize_inputs(model, block.layers, INPUTS,
                        lambda x, scale: nvfp4_activations(x, scale), found)

    context.progress(0.0, f"rounding {len(targets)} layers to {config.label}")
    if config.activations == "fp4":
        run_sequential(model, context.calibration_tokens(), targets, with_inputs,
                       context.progress)
    else:
        run_blockwise(model, targets, weights_only, context.progress)
    seconds = time.perf_counter() - began
    inputs = INPUTS.args() if config.activations == "fp4" else None
    scheme = "NVFP4 W4A4" if inputs is not None else "NVFP4A16"
    section = record.section(
        NVFP4Section, seconds, skipped_layers(model, targets), scheme=config.label,
        format=f"compressed-tensors {FORMAT} ({scheme})",
        precision=precision(next(iter(records.values())).weight_args(), inputs),
        activations=config.activations, global_scale_groups=shared,
        input_global_scales={n: float(s) for n, s in input_scales.items()} or None,
        experts_without_enough_tokens=thin_experts or None)
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds,
               "mean_relative_error": section.relative_error.mean}
    return StepResult(details=details, section=section, charts=[record.chart()])
