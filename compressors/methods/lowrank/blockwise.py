"""Whitened factorization block by block on the sequential engine (SVD-LLM's init for PELA).

For each block, in order:

1. the engine's `collect` feeds every targeted layer's inputs (outputs of the blocks already
   factorized) to the shared Gram accumulator (`ops.hessian.HessianAccumulator`, the same
   one SparseGPT and GPTQ use);
2. each layer's Gram matrix is factored (`ops.whitening`), `W·S` decomposed (`Tᵀ·W·S` when
   the loss gradients' Gram matrix `T Tᵀ` at the layer's output is given), and the layer
   replaced by its rank-r factors; the rank comes from the step's rule (or from the global
   allocation made beforehand by `spectra_pass`); the predicted squared output error is the
   sum of the discarded σᵢ², and the exact one on the same inputs is recorded beside it;
3. one paired pass runs the untouched copy of the block on the *original* model's
   activations and the factorized block on the factorized model's: it measures each layer's
   error against the original model's output (drift from earlier blocks included) and, with
   `refit`, solves `up` by least squares against that target (kept where it measures lower);
   the original activations then advance through the untouched copy;
4. the engine runs the factorized block to produce the next block's inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compressors.engine.modules import set_module, weight_matrix
from compressors.engine.sequential import BlockBatch, BlockContext, block_output, run_sequential
from compressors.methods.lowrank.layers import LowRankLinear
from compressors.ops.hessian import HessianAccumulator
from compressors.ops.whitening import (
    WhitenedSVD,
    Whitening,
    fit_error,
    output_energy,
    output_error,
    refit_up,
    whitened_svd,
    whitening_factor,
)

RankRule = Callable[[str, WhitenedSVD], "int | None"]
ProgressFn = Callable[[float, str], None]


@dataclass
class LayerRecord:
    """What happened to one layer, noted while the blocks run (errors relative to the output
    energy); the report shows it as `section.LowRankLayer`."""

    rank: int | None  # None: left dense
    predicted: float = 0.0  # Σ discarded σᵢ² / Σ σᵢ² of W·S (of W for the plain init)
    measured: float | None = None  # exact ‖(W − W')X‖² / ‖WX‖², same (factorized-path) inputs
    vs_original: float | None = None  # vs the original model's output, before refit
    refit: float | None = None  # the same after the least-squares refit (None: not run)
    refit_kept: bool = False
    whitening: str = ""  # cholesky / eigen


@dataclass
class _Stream:
    """The original model's block inputs, advanced through untouched copies of the blocks."""

    batches: list[BlockBatch] = field(default_factory=list)
    next_index: int = -1

    def sync(self, block: BlockContext) -> None:
        """Start (or restart, after blocks without targets) from the engine's inputs."""
        if block.index != self.next_index:
            self.batches = [BlockBatch(b.hidden.clone(), b.args, b.kwargs) for b in block.inputs]
        self.next_index = block.index + 1


def _grams(block: BlockContext) -> tuple[dict[str, torch.Tensor], HessianAccumulator]:
    accumulator = HessianAccumulator()
    block.collect(accumulator)
    return accumulator.sums, accumulator


def _factor_cache(dampening: float) -> Callable[[torch.Tensor], Whitening]:
    """Layers fed the same input (q/k/v, gate/up) share one Gram matrix: factor it once."""
    seen: list[tuple[torch.Tensor, Whitening]] = []

    def factor(gram: torch.Tensor) -> Whitening:
        for known, result in seen:
            if known.shape == gram.shape and torch.equal(known, gram):
                return result
        result = whitening_factor(gram, dampening)
        seen.append((gram, result))
        return result

    return factor


def _output_whitening(output_grams: dict[str, torch.Tensor] | None, name: str,
                      dampening: float) -> Whitening | None:
    """The factor of the layer's output-side Gram matrix (`fisher.output_fisher`), if any."""
    if output_grams is None:
        return None
    return whitening_factor(output_grams[name], dampening)


def spectra_pass(
    model: nn.Module, windows: torch.Tensor, targets: dict[str, nn.Module], dampening: float,
    progress: ProgressFn | None = None, output_grams: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """σ of `W·S` (of `Tᵀ·W·S` with output Gram matrices) per layer on the unchanged model,
    for the global allocation."""
    spectra: dict[str, torch.Tensor] = {}

    def observe(block: BlockContext) -> None:
        sums, _ = _grams(block)
        factor = _factor_cache(dampening)
        for name, layer in block.layers.items():
            product = (weight_matrix(layer).detach().double().to(sums[name].device)
                       @ factor(sums[name]).root)
            output = _output_whitening(output_grams, name, dampening)
            if output is not None:
                product = output.root.to(product.device).T @ product
            spectra[name] = torch.linalg.svdvals(product.float()).double().cpu()
        sums.clear()

    run_sequential(model, windows, targets, observe, progress)
    return spectra


def factorize_sequential(
    model: nn.Module, windows: torch.Tensor, targets: dict[str, nn.Module], rule: RankRule,
    dampening: float, refit: bool, progress: ProgressFn | None = None,
    output_grams: dict[str, torch.Tensor] | None = None,
) -> dict[str, LayerRecord]:
    """Factorize every target block by block (see the module docstring); records per layer."""
    records: dict[str, LayerRecord] = {}
    stream = _Stream()

    def process(block: BlockContext) -> None:
        stream.sync(block)
        original = copy.deepcopy(block.block)
        sums, _ = _grams(block)
        factor = _factor_cache(dampening)
        for name, layer in list(block.layers.items()):
            output = _output_whitening(output_grams, name, dampening)
            records[name] = _factorize_layer(model, name, layer, sums[name], factor, rule,
                                             output)
        sums.clear()
        _paired_pass(block, original, stream, records, refit)
        del original

    run_sequential(model, windows, targets, process, progress)
    return records


def _factorize_layer(
    model: nn.Module, name: str, layer: nn.Module, gram: torch.Tensor,
    factor: Callable[[torch.Tensor], Whitening], rule: RankRule,
    output: Whitening | None = None,
) -> LayerRecord:
    whitening = factor(gram)
    svd = whitened_svd(weight_matrix(layer), whitening, output=output)
    rank = rule(name, svd)
    if rank is None:
        return LayerRecord(None, whitening=whitening.method)
    up, down = svd.factors(rank)
    weight = weight_matrix(layer).detach().to(device=gram.device, dtype=torch.float64)
    approx = up @ down
    if output is not None:  # measured in the metric the SVD minimised, as the prediction
        left = output.root.to(gram.device).T
        weight, approx = left @ weight, left @ approx
    energy = output_energy(weight, gram)
    measured = output_error(weight, approx, gram) / max(energy, 1e-300)
    set_module(model, name, LowRankLinear.from_factors(layer, up, down))
    return LayerRecord(rank, predicted=svd.loss(rank) / max(svd.energy, 1e-300),
                       measured=measured, whitening=whitening.method)


@dataclass
class _FitStats:
    """Σ y yᵀ-energy, Σ y zᵀ, Σ z zᵀ of one layer (y: original output, z = down x)."""

    energy: float = 0.0
    cross: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, target: torch.Tensor, z: torch.Tensor) -> None:
        # float32 products, float64 sums (as the Gram accumulator): the sums stay exact
        y, zz = target.float(), z.float()
        self.energy += float(y.double().pow(2).sum())
        cross, gram = (y.T @ zz).double(), (zz.T @ zz).double()
        self.cross = cross if self.cross is None else self.cross + cross
        self.gram = gram if self.gram is None else self.gram + gram


@torch.no_grad()
def _paired_pass(
    block: BlockContext, original: nn.Module, stream: _Stream,
    records: dict[str, LayerRecord], refit: bool,
) -> None:
    """Original block on the original activations, factorized block on the factorized
    model's, batch by batch; accumulate fit statistics, refit, advance the original stream."""
    modules = dict(block.block.named_modules())
    prefix = block.name + "."
    factorized = {n: modules[n[len(prefix):]] for n, r in records.items()
                  if n.startswith(prefix) and r.rank is not None}
    if not factorized:
        _advance(block, original, stream)
        return
    originals = dict(original.named_modules())
    stats = {name: _FitStats() for name in factorized}
    targets: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in factorized.items():
        source = originals[name[len(prefix):]]
        handles.append(source.register_forward_hook(_keep_output(targets, name, layer)))
        handles.append(layer.register_forward_hook(_accumulate(targets, stats, name, layer)))
    try:
        for position, batch in enumerate(stream.batches):
            stream.batches[position] = BlockBatch(
                _run(original, batch, block.device), batch.args, batch.kwargs)
            _run(block.block, block.inputs[position], block.device)
            targets.clear()
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in factorized.items():
        _finish_refit(layer, stats[name], records[name], refit)


def _keep_output(targets: dict[str, torch.Tensor], name: str, layer: LowRankLinear):
    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        y = output.detach().reshape(-1, layer.out_features)
        targets[name] = y - layer.bias.detach() if layer.bias is not None else y

    return hook


def _accumulate(targets: dict[str, torch.Tensor], stats: dict[str, _FitStats], name: str,
                layer: LowRankLinear):
    width = layer.in_features

    def hook(module: LowRankLinear, args: tuple, _output: torch.Tensor) -> None:
        x = args[0].detach().reshape(-1, width)
        z = torch.nn.functional.linear(x, module.down.detach())
        stats[name].add(targets[name], z)

    return hook


def _run(module: nn.Module, batch: BlockBatch, device: torch.device | None) -> torch.Tensor:
    hidden = batch.hidden if device is None else batch.hidden.to(device)
    return block_output(module(hidden, *batch.args, **batch.kwargs)).to(batch.hidden.device)


def _advance(block: BlockContext, original: nn.Module, stream: _Stream) -> None:
    with torch.no_grad():
        for position, batch in enumerate(stream.batches):
            stream.batches[position] = BlockBatch(
                _run(original, batch, block.device), batch.args, batch.kwargs)


def _finish_refit(layer: LowRankLinear, stats: _FitStats, record: LayerRecord,
                  refit: bool) -> None:
    """Error vs the original output before (and after) the least-squares `up`."""
    scale = max(stats.energy, 1e-300)
    current = layer.up.detach().to(stats.cross.device)
    record.vs_original = fit_error(stats.energy, stats.cross, stats.gram, current) / scale
    if not refit:
        return
    solved = refit_up(stats.cross, stats.gram)
    record.refit = fit_error(stats.energy, stats.cross, stats.gram, solved) / scale
    if bool(torch.isfinite(solved).all()) and record.refit < record.vs_original:
        layer.up.copy_(solved.to(layer.up.dtype))
        record.refit_kept = True
