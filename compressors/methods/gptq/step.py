"""GPTQ (Frantar et al., 2022) on the sequential engine, block by block.

Like SparseGPT: block k's layer inputs come from the already-quantized blocks 0..k-1. One pass
over the block accumulates each layer's `XᵀX` (`ops.hessian`, the code SparseGPT uses), the
shared factor of its (act-ordered) dampened inverse Hessian is formed once per distinct input
(q/k/v share one, gate/up another), and layers sharing a factor are quantized *together*, their
rows stacked into one matrix: the sweep is row-independent, so this is exact and runs the
per-column loop once instead of three times. Each result is installed through the
compressed-tensors dequantizer (`checkpoint.install`) and its pruned zeros are checked; the
engine then runs the quantized block to produce the next block's inputs. A mixture-of-experts
block whose Hessians would not fit at once is done in several such passes
(`BlockContext.hessian_passes`: the dense layers, then the experts a chunk at a time). Each
layer's Hessian is kept in float32 beside its factor (the act-order importances and the
report's error metric read it in float32 anyway): half the memory of a float64 copy.
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.experts import starved
from compressors.engine.quantization import (
    QuantRecord,
    grids_for,
    keep_mask,
    skipped_layers,
    target_layers,
)
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.methods.gptq.config import GPTQConfig
from compressors.methods.gptq.section import GPTQSection
from compressors.methods.gptq.sweep import gptq_quantize
from compressors.ops.hessian import HessianAccumulator, HessianFactor, one_thread
from compressors.ops.int_grid import Grid, QuantizedWeight, rtn_quantize


def _stacked(layers: dict[str, nn.Module], keeps: dict[str, torch.Tensor | None]
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    weights = torch.cat([layer.weight.data.to(torch.float32) for layer in layers.values()])
    if all(keeps[name] is None for name in layers):
        return weights, None
    keep = torch.cat([keeps[name] if keeps[name] is not None
                      else torch.ones_like(layer.weight.data, dtype=torch.bool)
                      for name, layer in layers.items()])
    return weights, keep


def _split(quantized: QuantizedWeight, layers: dict[str, nn.Module]) -> list[QuantizedWeight]:
    parts, start = [], 0
    for layer in layers.values():
        end = start + layer.weight.shape[0]
        parts.append(QuantizedWeight(quantized.codes[start:end], quantized.scale[start:end],
                                     quantized.zero[start:end], quantized.grid))
        start = end
    return parts


def quantize_group(
    layers: dict[str, nn.Module], factor: HessianFactor, hessian: torch.Tensor, grid: Grid,
    config: GPTQConfig, context: StepContext, record: QuantRecord,
) -> float:
    """Quantize layers that share one Hessian as one stacked matrix; returns the OBS loss."""
    keeps = {name: keep_mask(layer, name, context) for name, layer in layers.items()}
    weights, keep = _stacked(layers, keeps)
    importance = torch.diagonal(hessian).to(torch.float32)
    quantized, loss = gptq_quantize(weights, factor, grid, keep, importance,
                                    config.clip_search, config.blocksize)
    for (name, layer), part in zip(layers.items(), _split(quantized, layers), strict=True):
        record.add(name, layer, part, keeps[name], hessian)
    return loss


def run(model: nn.Module, config: GPTQConfig, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    grids = grids_for(model, targets, config)
    record = QuantRecord(config, metric="hessian")
    fallbacks: dict[str, float] = {}
    dead: dict[str, int] = {}
    thin_experts: dict[str, int] = {}
    losses: list[float] = []
    began = time.perf_counter()

    @torch.no_grad()
    def quantize_block(block: BlockContext) -> None:
        for part in block.hessian_passes():
            quantize_pass(part)

    def quantize_pass(block: BlockContext) -> None:
        hessians = HessianAccumulator()
        tokens = block.collect(hessians, all_experts=context.calibration.all_experts(True))
        thin = starved(block.layers, tokens)
        hessians.discard(thin)
        thin_experts.update(thin)
        for name in thin:  # no Hessian worth the name: round-to-nearest on the same grid
            layer = block.layers[name]
            keep = keep_mask(layer, name, context)
            record.add(name, layer, rtn_quantize(layer.weight.data, grids[name], keep,
                                                 search=config.clip_search), keep)
        layers = {n: layer for n, layer in block.layers.items() if n not in thin}
        exact = {name: hessians.hessian(name).to(torch.float32) for name in layers}
        factors = hessians.factors(config.dampening, act_order=config.act_order)
        shared: dict[tuple[int, Grid], dict[str, nn.Module]] = defaultdict(dict)
        for name, layer in layers.items():
            shared[(id(factors[name]), grids[name])][name] = layer
            if factors[name].attempts > 1:
                fallbacks[name] = factors[name].dampening
            if int(factors[name].dead.sum()):
                dead[name] = int(factors[name].dead.sum())
        with one_thread():
            for (_, grid), layers in shared.items():
                first = next(iter(layers))
                losses.append(quantize_group(layers, factors[first], exact[first], grid,
                                             config, context, record))

    context.progress(0.0, f"quantizing {len(targets)} layers to {config.label}")
    run_sequential(model, context.calibration_tokens(), targets, quantize_block, context.progress)
    seconds = time.perf_counter() - began
    section = record.section(
        GPTQSection, context, seconds, skipped_layers(model, targets),
        act_order=config.act_order, dampening=config.dampening, blocksize=config.blocksize,
        obs_loss_total=sum(losses), cholesky_fallbacks=fallbacks, dead_inputs=dead,
        experts_without_enough_tokens=thin_experts)
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds,
               "mean_relative_error": section.relative_error.mean}
    return StepResult(details=details, section=section, charts=[record.chart()])
