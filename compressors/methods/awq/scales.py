"""AWQ's scale search on one block (Lin et al. 2024), run by the sequential engine.

For every fold of the block (`engine.folding`: an op and the layers reading its output, e.g.
`input_layernorm` -> q/k/v), one pass over the calibration batches gathers the mean magnitude
of each input channel and what the objective needs. Then, fold by fold, each point `(r, duo)`
of the grid gives scales `s` (`ops.smoothing.awq_scales`), the layers' weights become
`Q(W·s)/s` (rounded to nearest on the step's grid, min-max scales), and the point with the
least error wins; its scales are folded. Two objectives:

- `module` (AWQ's and llm-compressor's): the mean squared error of the fold's *parent* output
  (the smallest module holding its layers: the attention module for q/k/v, the MLP for
  gate/up, `down_proj` itself) against its float output, the parent run again on the calls
  recorded in the gathering pass. It sees the nonlinearity after the layers (softmax, the
  gated activation), at one parent forward over the calibration tokens per grid point.
- `layers`: the layers' own output error `Σ ‖(Q(W·s)/s − W) X‖²`, computed exactly from the
  inputs' Gram matrix `XᵀX` gathered once (`ops.smoothing.output_error`): no forward per grid
  point, so tens of times cheaper, blind to what follows the layers.

A fold whose parent is its one layer (`o_proj`, `down_proj`) has the two objectives equal (the
parent's output error is the layer's), so it takes whichever form costs less: the Gram form
(`out × in²` per point) once the calibration holds more tokens than the layer has inputs (the
protocol's 16k tokens against SmolLM2's 1,536: ten times fewer operations than a forward).

The first point is `s = 1`, so a fold never ends worse than no scaling on its objective
(`loss_unscaled` vs `loss_best` in the report). The block's function is unchanged by the
folds.

With `clip` (the step's `clip_search` with `quantizer: rtn`), the same gathering pass also sums
each quantized layer's per-group Gram blocks of its inputs (once per input: q/k/v share one),
and once the folds are applied every layer's groups are clamped to the range whose rounding
least changes its output (`ops.clipping`, on the inputs as the folds left them). The engine
then runs the block (unquantized, clamped) to give the next block its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from compressors.engine.folding import Call, Fold, apply_fold, recording_calls, submodule
from compressors.engine.modules import in_features
from compressors.engine.sequential import BlockContext, block_output
from compressors.ops.clipping import Clip, group_grams, output_clip, rescaled_grams
from compressors.ops.int_grid import Grid
from compressors.ops.smoothing import (
    awq_scales,
    normalised_column_means,
    output_error,
    scaled_round_trip,
)

Objective = Literal["module", "layers"]
Measure = Callable[[dict[str, torch.Tensor]], float]  # rounded weights by layer -> error


@dataclass
class FoldResult:
    """The search's outcome for one fold."""

    fold: Fold
    scales: torch.Tensor
    ratio: float
    duo: bool
    loss_unscaled: float
    loss_best: float


@torch.no_grad()
def scale_block(block: BlockContext, folds: list[Fold], grids: dict[str, Grid],
                points: list[tuple[float, bool]], objective: Objective, clip: bool
                ) -> tuple[list[FoldResult], dict[str, Clip]]:
    """Search and fold the scales of every fold of the block, in order; then, with `clip`,
    clamp every quantized layer's groups to their output-error ranges (`ops.clipping`)."""
    watched = {next(c for c in f.consumers if c in block.layers): f for f in folds}
    reader = _input_readers(block, watched, grids) if clip else {}
    sources = set(reader.values())
    tokens = sum(batch.hidden.shape[:-1].numel() for batch in block.inputs)
    by_gram = {name for name, f in watched.items() if objective == "layers" or (
        f.consumers == (f.parent,) and tokens > in_features(block.layers[name]))}
    sums: dict[str, torch.Tensor] = {}
    grams: dict[str, torch.Tensor] = {}
    clip_grams: dict[str, torch.Tensor] = {}

    def observe(name: str, _layer: nn.Module, inputs: torch.Tensor) -> None:
        values = inputs.to(torch.float32)
        if name in watched:
            total = values.abs().sum(dim=0)
            sums[name] = sums[name] + total if name in sums else total
        if name in by_gram:
            gram = (values.T @ values).to(torch.float64)
            grams[name] = grams[name] + gram if name in grams else gram
        if name in sources:
            found = group_grams(values, grids[name].width(values.shape[1]))
            clip_grams[name] = clip_grams[name] + found if name in clip_grams else found

    parents = list(dict.fromkeys(f.parent for n, f in watched.items() if n not in by_gram))
    observed = {n: block.layers[n] for n in [*watched, *sources]}
    with recording_calls(block, parents) as calls:
        counts = BlockContext(block.index, block.name, block.block, observed, block.inputs,
                              block.device).collect(observe)
    results = []
    for name, fold in watched.items():
        means = sums[name] / max(counts[name], 1)
        rounded = {c: submodule(block, c) for c in fold.consumers if c in grids}
        originals = {c: layer.weight.data.clone() for c, layer in rounded.items()}
        if name in by_gram:
            measure = _layers_error(originals, grams.pop(name), counts[name])
        else:
            measure = _module_error(submodule(block, fold.parent), calls[fold.parent], rounded)
        try:
            result = _search(fold, originals, means, grids, points, measure)
        finally:
            for c, layer in rounded.items():
                layer.weight.data.copy_(originals[c])
        apply_fold(block, fold, result.scales)
        results.append(result)
    scaled = {c: r.scales for r in results for c in r.fold.consumers}
    clips = {name: _clip(block.layers[name], grids[name], clip_grams[source] / counts[source],
                         scaled.get(name))
             for name, source in reader.items() if source in clip_grams}
    return results, clips


def _input_readers(block: BlockContext, watched: dict[str, Fold], grids: dict[str, Grid]
                   ) -> dict[str, str]:
    """For each quantized layer of the block, the layer whose input hook sees its input: the
    watched one of its fold (q/k/v read one input: gathered once), else itself."""
    shared = {c: name for name, f in watched.items() for c in f.consumers}
    return {name: shared.get(name, name) for name in block.layers if name in grids}


def _clip(layer: nn.Module, grid: Grid, grams: torch.Tensor, scales: torch.Tensor | None
          ) -> Clip:
    """Clamp `layer`'s groups in place to their output-error ranges, on its inputs as they
    are now (divided by the fold's scales, its weight multiplied)."""
    clamped, found = output_clip(layer.weight.data, grid,
                                 grams if scales is None else rescaled_grams(grams, scales))
    layer.weight.data.copy_(clamped)
    return found


def _module_error(parent: nn.Module, calls: list[Call], rounded: dict[str, nn.Module]
                  ) -> Measure:
    """The parent's output error, with the rounded weights installed in its layers."""
    reference = [_output(parent, call) for call in calls]

    def measure(weights: dict[str, torch.Tensor]) -> float:
        for c, layer in rounded.items():
            layer.weight.data.copy_(weights[c].to(layer.weight.dtype))
        return _loss(parent, calls, reference)

    return measure


def _layers_error(originals: dict[str, torch.Tensor], gram: torch.Tensor, tokens: int
                  ) -> Measure:
    """The layers' own mean squared output error, from the inputs' Gram matrix."""
    gram32 = gram.to(torch.float32)
    rows = sum(w.shape[0] for w in originals.values())

    def measure(weights: dict[str, torch.Tensor]) -> float:
        total = sum(output_error(originals[c], weights[c], gram32) for c in originals)
        return total / max(tokens * rows, 1)

    return measure


def _search(fold: Fold, originals: dict[str, torch.Tensor], means: torch.Tensor,
            grids: dict[str, Grid], points: list[tuple[float, bool]], measure: Measure
            ) -> FoldResult:
    first = next(iter(originals))
    width = grids[first].width(originals[first].shape[1])
    weight_means = (normalised_column_means(list(originals.values()), width)
                    if any(duo for _, duo in points) else None)
    best: tuple[float, float, bool, torch.Tensor] | None = None
    unscaled = float("nan")
    for ratio, duo in points:
        scales = awq_scales(means, weight_means if duo else None, ratio)
        loss = measure({c: scaled_round_trip(w, scales.to(w.device), grids[c])
                        for c, w in originals.items()})
        if ratio == 0.0 and not duo:
            unscaled = loss
        if best is None or loss < best[0]:
            best = (loss, ratio, duo, scales)
    assert best is not None
    loss, ratio, duo, scales = best
    if not torch.isfinite(torch.tensor(loss)):
        raise RuntimeError(f"awq: no finite output error for {fold.predecessor}'s layers "
                           "(the block's outputs hold NaN or inf)")
    return FoldResult(fold, scales, ratio, duo, unscaled, loss)


def _output(module: nn.Module, call: Call) -> torch.Tensor:
    args, kwargs = call
    return block_output(module(*args, **kwargs))


def _loss(parent: nn.Module, calls: list[Call], reference: list[torch.Tensor]) -> float:
    """Mean squared error of the parent's outputs against `reference`, over every call."""
    total, count = 0.0, 0
    for call, expected in zip(calls, reference, strict=True):
        diff = _output(parent, call).to(torch.float32) - expected.to(torch.float32)
        total += float(diff.pow(2).sum())
        count += diff.numel()
    return total / max(count, 1)
