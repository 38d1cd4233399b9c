"""AWQ (`awq`): activation-aware scales searched block by block, folded, then int weights.

1. Scales (`run_sequential`, `scales.scale_block`): for every op that feeds the block's layers
   (`engine.folding`), AWQ's grid search picks per-input-channel scales by the output error of
   the module holding the layers once their scaled weights are rounded on the step's grid, and
   folds them (the model's function is unchanged); with RTN, each group's range is then
   clipped by its output error on the calibration tokens (`ops.clipping`).
2. Weights: the `rtn` (default) or `gptq` step, through the registry (`engine.rounding`), on
   the scaled model, with the step's grid fields; its compressed-tensors pack-quantized records
   are the checkpoint's.

Expert matrices of a mixture-of-experts block keep scale 1 (their inputs come from a norm
shared by every expert and the router) and are rounded like the rest; they are listed under
`unscaled_layers`, as is any layer whose input no op can take a scale for (GQA's o_proj).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.folding import FoldFinder, unscaled_layers
from compressors.engine.quantization import grids_for, skipped_layers, target_layers
from compressors.engine.rounding import merged_section, round_weights
from compressors.engine.schemes import precision
from compressors.engine.sections import InferencePrecision
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.io.compressed_tensors import QUANT_ATTR, ct_args
from compressors.io.scheme_notes import weights_precision
from compressors.methods.awq.config import AWQConfig
from compressors.methods.awq.scales import FoldResult, scale_block
from compressors.methods.awq.section import AWQSection, OutputClipping, SearchedFold
from compressors.ops.clipping import Clip
from compressors.ops.smoothing import search_points
from compressors.report.schema import Chart, Series

GRID_FIELDS = ("bits", "group_size", "symmetric", "clip_search", "scale_dtype", "include",
               "exclude")


def run(model: nn.Module, config: AWQConfig, context: StepContext) -> StepResult:
    targets = target_layers(model, config)
    grids = grids_for(model, targets, config)
    points = search_points(config.grid, config.scales)
    finder = FoldFinder()
    results: list[FoldResult] = []
    clips: dict[str, Clip] = {}
    clip = config.clip_search and config.quantizer == "rtn"  # gptq searches its own
    unscaled: dict[str, str] = {}
    share = 0.9 if config.quantizer == "rtn" else 0.5
    began = time.perf_counter()

    @torch.no_grad()
    def scale(block: BlockContext) -> None:
        folds = finder.folds(block)
        unscaled.update(unscaled_layers(block.layers, folds))
        found, clipped = scale_block(block, folds, grids, points, config.objective, clip)
        results.extend(found)
        clips.update(clipped)

    def progress(fraction: float, message: str) -> None:
        context.progress(share * fraction, f"awq scales: {message}")

    context.progress(0.0, f"searching AWQ scales for {len(targets)} layers ({len(points)} "
                     "points each)")
    run_sequential(model, context.calibration_tokens(), targets, scale, progress)
    scaled = time.perf_counter() - began
    fields = config.model_dump(include=set(GRID_FIELDS))
    if clip:
        fields["clip_search"] = False  # the weights are clamped to the ranges AWQ chose
    if config.quantizer == "gptq":
        fields["dampening"] = config.dampening
    inner = round_weights(model, config.quantizer, fields, context, share)
    seconds = time.perf_counter() - began
    folds = [SearchedFold(predecessor=r.fold.predecessor, consumers=list(r.fold.consumers),
                          scale_min=float(r.scales.min()), scale_max=float(r.scales.max()),
                          ratio=r.ratio, duo_scaling=r.duo, loss_unscaled=r.loss_unscaled,
                          loss_best=r.loss_best) for r in results]
    section = merged_section(
        AWQSection, inner.section, scheme=config.label, method="awq",
        quantize_seconds=seconds, skipped_layers=skipped_layers(model, targets),
        quantizer=config.quantizer, grid_points=len(points), scales=config.scales,
        objective=config.objective,
        precision=weight_only_precision(targets), folds=folds, unscaled_layers=unscaled,
        clipping=clip_summary(clips) if clip else None, scaling_seconds=scaled)
    details = {"scheme": config.label, "quantized_layers": len(targets),
               "scaled_layers": len(targets) - len(unscaled),
               "bits_per_weight": section.bits_per_weight, "quantize_seconds": seconds}
    return StepResult(details=details, section=section, charts=[*inner.charts, search_chart(folds)])


def clip_summary(clips: dict[str, Clip]) -> OutputClipping:
    """The clipping over every layer: output errors summed, the share of groups shrunk."""
    return OutputClipping(
        layers=len(clips),
        shrunk_groups=sum(c.shrunk for c in clips.values()) / max(len(clips), 1),
        error_minmax=sum(c.error_minmax for c in clips.values()),
        error_clipped=sum(c.error_clipped for c in clips.values()))


def weight_only_precision(targets: dict[str, nn.Module]) -> InferencePrecision:
    """Each tensor's precision at inference, from the grids the quantizer recorded (auto
    group sizes may differ by layer width: each is named)."""
    grids = sorted({getattr(layer, QUANT_ATTR).grid for layer in targets.values()},
                   key=lambda grid: grid.group_size)
    found = precision(ct_args(grids[0]), None)
    if len(grids) == 1:
        return found
    words = " / ".join(weights_precision(ct_args(grid)) for grid in grids)
    return found.model_copy(update={"weights": words})


def search_chart(folds: list[SearchedFold]) -> Chart:
    """Per scale vector, the search's output error without scales and with the chosen ones."""
    return Chart(id="awq-search", kind="bar", log_y=True, x_label="op folded into",
                 y_label="output mean squared error",
                 title="AWQ: output error of each group of layers rounded without scales and "
                       "with the scales chosen",
                 series=[Series(name="unscaled", points=[(f.predecessor, f.loss_unscaled)
                                                         for f in folds]),
                         Series(name="AWQ scales", points=[(f.predecessor, f.loss_best)
                                                           for f in folds])])
