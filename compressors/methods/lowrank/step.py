"""The `lowrank` recipe step: choose ranks, factorize, refit, train with PELA, report.

`init: whitened` (default) factorizes block by block on the sequential engine
(`blockwise.factorize_sequential`); with `weighting: fisher` (default) the loss gradients' Gram
matrix at every layer's output is collected first (`fisher.output_fisher`, one backward pass of
the whole model per calibration window); with `target_params` and `allocation: loss` the ranks
are allocated across all layers from the whitened spectra of the unchanged model
(`blockwise.spectra_pass`, one more pass). `init: svd` is plain truncated SVD of the weights,
without calibration. The frozen original the factorized model learns from is a copy of the
model as this step receives it (for a first step: the loaded checkpoint), so the step also
composes after others.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.modules import is_causal_lm, select_layers, set_module, weight_matrix
from compressors.engine.windows import text_random_windows
from compressors.evaluate import perplexity
from compressors.methods.lowrank.blockwise import (
    LayerRecord,
    factorize_sequential,
    spectra_pass,
)
from compressors.methods.lowrank.config import LowRankConfig
from compressors.methods.lowrank.factorize import (
    allocate_energy,
    allocate_uniform,
    break_even_rank,
    rank_for_energy,
    rank_for_ratio,
)
from compressors.methods.lowrank.fisher import output_fisher
from compressors.methods.lowrank.layers import LowRankLinear, lowrank_layers, merge_to_dense
from compressors.methods.lowrank.section import EmbeddingCosine, LowRankLayer, LowRankSection
from compressors.methods.lowrank.train import train_pela, training_windows
from compressors.ops.whitening import WhitenedSVD, allocate_by_loss
from compressors.recipe.text import load_text
from compressors.report.charts import layer_chart
from compressors.report.schema import Chart, Series

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
Shapes = dict[str, tuple[int, int]]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


def pays(shape: tuple[int, int], rank: int, max_layer_keep: float) -> bool:
    """Rank-r factors keep at most `max_layer_keep` of the layer's parameters (and FLOPs)."""
    out, inp = shape
    return rank * (out + inp) <= max_layer_keep * out * inp and rank * (out + inp) < out * inp


def planned_ranks(
    shapes: Shapes, config: LowRankConfig, spectra: dict[str, torch.Tensor] | None = None,
) -> dict[str, int | None] | None:
    """Ranks known before factorizing (None for a layer: stays dense); None when the rule is
    per layer on the spectrum it factorizes (`energy`). `spectra`: for `allocation: loss`."""
    if config.rank is not None:
        return dict.fromkeys(shapes, config.rank)
    if config.ratio is not None:
        return {n: rank_for_ratio(out, inp, config.ratio) for n, (out, inp) in shapes.items()}
    if config.energy is not None:
        return None
    if config.allocation == "uniform":
        return dict(allocate_uniform(shapes, config.target_params))
    if config.allocation == "energy":
        assert spectra is not None
        return dict(allocate_energy(spectra, shapes, config.target_params))
    assert spectra is not None
    budget = config.target_params * sum(out * inp for out, inp in shapes.values())
    gains = {n: _gains(sigma, config.loss_weighted) for n, sigma in spectra.items()}
    return allocate_by_loss(gains, shapes, budget, config.max_layer_keep)


def _gains(sigma: torch.Tensor, in_loss_units: bool) -> torch.Tensor:
    """σᵢ² on one scale across layers: as they are when the Fisher weighting made them the
    predicted loss increase, else relative to the layer's output energy Σσ²."""
    squared = sigma.double() ** 2
    return squared if in_loss_units else squared / squared.sum().clamp_min(1e-300)


def rank_rule(shapes: Shapes, config: LowRankConfig, planned: dict[str, int | None] | None,
              ) -> Callable[[str, WhitenedSVD], int | None]:
    """The rank of a layer given its decomposition; None = leave it dense (does not pay)."""

    def rule(name: str, svd: WhitenedSVD) -> int | None:
        rank = planned[name] if planned is not None else rank_for_energy(svd.sigma,
                                                                          config.energy)
        if rank is None or not pays(shapes[name], rank, config.max_layer_keep):
            return None
        return rank

    return rule


def choose_ranks(
    layers: dict[str, nn.Module], config: LowRankConfig,
    spectra: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """(rank per layer to factorize, reason per layer left dense) for the rules that need no
    calibration (`spectra` of the weights are computed here when a rule needs them)."""
    shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in layers.items()}
    if spectra is None and (config.energy is not None or (config.target_params is not None
                            and config.allocation != "uniform")):
        spectra = {name: torch.linalg.svdvals(weight_matrix(layer).detach().float())
                   for name, layer in layers.items()}
    planned = planned_ranks(shapes, config, spectra)
    if planned is None:
        planned = {n: rank_for_energy(spectra[n], config.energy) for n in shapes}
    chosen: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name, rank in planned.items():
        if rank is not None and pays(shapes[name], rank, config.max_layer_keep):
            chosen[name] = rank
        else:
            skipped[name] = _dense_reason(shapes[name], rank, config)
    return chosen, skipped


def _dense_reason(shape: tuple[int, int], rank: int | None, config: LowRankConfig) -> str:
    out, inp = shape
    if rank is None:
        return "the loss allocation kept it dense: its discarded directions cost the most"
    return (f"rank {rank} x ({out}+{inp}) = {rank * (out + inp)} > {config.max_layer_keep:g}"
            f" x {out}x{inp} (break-even rank {break_even_rank(out, inp):.1f}): factorizing "
            "would not pay")


def _factorize_plain(model: nn.Module, layers: dict[str, nn.Module], config: LowRankConfig,
                     ) -> tuple[dict[str, LayerRecord], dict[str, str]]:
    """`init: svd`: truncated SVD of the weights themselves, layer by layer (no data)."""
    ranks, skipped = choose_ranks(layers, config)
    records: dict[str, LayerRecord] = {}
    for name, rank in ranks.items():
        weight = weight_matrix(layers[name]).detach().float()
        squared = torch.linalg.svdvals(weight).double() ** 2
        records[name] = LayerRecord(rank, predicted=float(squared[rank:].sum() / squared.sum()),
                                    whitening="identity")
        set_module(model, name, LowRankLinear.from_layer(layers[name], rank))
    for name in skipped:
        records[name] = LayerRecord(None, whitening="identity")
    return records, skipped


def _factorize_whitened(
    model: nn.Module, layers: dict[str, nn.Module], config: LowRankConfig,
    context: StepContext,
) -> tuple[dict[str, LayerRecord], dict[str, str]]:
    """`init: whitened`: allocation pass when the rule needs it, then the factorizing pass."""
    shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in layers.items()}
    windows = context.calibration_tokens()
    output_grams = None
    reason = config.needs_causal_lm()
    if reason:
        if not is_causal_lm(model):
            raise ValueError(f"lowrank {reason[1]}: this model ({type(model).__name__}) has "
                             "no LM head")
        context.progress(0.0, "loss gradients at every layer's output (fisher weighting)")
        output_grams = output_fisher(model, windows, layers, context.device,
                                     _span(context, 0.0, 0.01))
    spectra = None
    if config.target_params is not None and config.allocation == "loss":
        context.progress(0.01, "whitened spectra of every layer (allocation pass)")
        spectra = spectra_pass(model, windows, layers, config.dampening,
                               _span(context, 0.01, 0.02), output_grams)
    elif config.target_params is not None and config.allocation == "energy":
        spectra = {n: torch.linalg.svdvals(weight_matrix(m).detach().float())
                   for n, m in layers.items()}
    planned = planned_ranks(shapes, config, spectra)
    context.progress(0.02, "factorizing block by block")
    records = factorize_sequential(model, windows, layers, rank_rule(shapes, config, planned),
                                   config.dampening, config.refit, _span(context, 0.02, 0.05),
                                   output_grams)
    skipped = {name: _dense_reason(shapes[name], planned[name] if planned else None, config)
               for name, record in records.items() if record.rank is None}
    return records, skipped


def training_tokens(config: LowRankConfig, context: StepContext) -> torch.Tensor:
    """What PELA trains on: fresh windows of the training text, one per sequence the run
    consumes (as PERP's `lm` objective draws them), so no window is seen twice.

    Cycling the 32 calibration windows instead over-fitted them: 300 steps (4.7 passes) took
    SmolLM2 at 80% kept from 65.3 to 86.3 perplexity on the evaluation text while the training
    loss fell from 4.3 to 1.7 (`docs/benchmarks.md`). A context built from token windows
    without a tokenizer (tests on tiny models) trains on those windows, cut to `seqlen`.
    """
    if context.tokenizer is None:
        return training_windows(context.calibration_tokens(), config.seqlen)
    text = config.text or context.calibration.text
    return text_random_windows(context.tokenizer, text, config.train_steps * config.batch_size,
                               config.seqlen, config.seed)


def _span(context: StepContext, start: float, end: float) -> Callable[[float, str], None]:
    def progress(fraction: float, message: str) -> None:
        context.progress(start + (end - start) * fraction, message)

    return progress


def error_chart(records: dict[str, LayerRecord]) -> Chart:
    """Per factorized layer: predicted (Σ discarded σ²) vs measured relative output error."""
    done = {n: r for n, r in records.items() if r.rank is not None}
    series = [Series(name="predicted", points=[(n, r.predicted) for n, r in done.items()])]
    measured = [(n, r.measured) for n, r in done.items() if r.measured is not None]
    if measured:
        series.append(Series(name="measured", points=measured))
    drift = [(n, r.vs_original) for n, r in done.items() if r.vs_original is not None]
    if drift:
        series.append(Series(name="vs original model", points=drift))
    refit = [(n, r.refit) for n, r in done.items() if r.refit is not None]
    if refit:
        series.append(Series(name="after refit", points=refit))
    return Chart(id="lowrank-error", title="Relative output error per factorized layer",
                 kind="bar", x_label="layer", y_label="relative squared error", log_y=True,
                 series=series)


def held_out_sentences(text_spec: str, count: int) -> list[str]:
    """The first `count` sentences of reasonable length in the evaluation text."""
    sentences = []
    for piece in _SENTENCE_END.split(load_text(text_spec)):
        sentence = " ".join(piece.split())
        if 30 <= len(sentence) <= 400:
            sentences.append(sentence)
            if len(sentences) == count:
                break
    return sentences


@torch.no_grad()
def sentence_embeddings(
    model: nn.Module, tokenizer: Any, sentences: list[str], batch_size: int = 16
) -> torch.Tensor:
    """Mean-pooled last hidden states over non-padding tokens (sentence-transformers style)."""
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start : start + batch_size], padding=True, truncation=True,
                          max_length=256, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        chunks.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0))
    return torch.cat(chunks)


def embedding_cosine(reference: torch.Tensor, model: nn.Module, tokenizer: Any,
                     sentences: list[str]) -> EmbeddingCosine:
    cos = torch.nn.functional.cosine_similarity(
        reference, sentence_embeddings(model, tokenizer, sentences), dim=-1)
    return EmbeddingCosine(mean=float(cos.mean()), min=float(cos.min()))


def run(model: nn.Module, config: LowRankConfig, context: StepContext) -> StepResult:
    started = time.perf_counter()
    layers = select_layers(model, config.include, config.exclude)
    causal = is_causal_lm(model)
    in_memory = context.placement_mode == "in_memory"
    refused = config.placement_error(context.placement_mode)
    if refused:
        raise ValueError(refused)
    targeted_before = sum(weight_matrix(layer).numel() for layer in layers.values())
    model_before = _count(model)
    context.progress(0.0, f"factorizing {len(layers)} layers ({config.init} init)")

    evaluate_ppl = config.evaluate and causal and context.evaluation.windows > 0 and in_memory
    evaluate_cos = config.evaluate and not causal and in_memory
    teacher = copy.deepcopy(model).eval() if (config.train_steps > 0 or evaluate_cos) else None
    sentences: list[str] = []
    reference = None
    if evaluate_cos:
        sentences = held_out_sentences(context.evaluation.text, config.cosine_sentences)
        reference = sentence_embeddings(teacher, context.tokenizer, sentences)

    if config.init == "whitened":
        records, skipped = _factorize_whitened(model, layers, config, context)
    else:
        records, skipped = _factorize_plain(model, layers, config)
    factorized = lowrank_layers(model)
    for layer in factorized.values():
        layer.balance_()  # before any training: see LowRankLinear.balance_
    targeted_after = (sum(layer.up.numel() + layer.down.numel() for layer in factorized.values())
                      + sum(weight_matrix(layers[name]).numel() for name in skipped))
    model_after = _count(model)
    svd_seconds = time.perf_counter() - started
    context.progress(0.05, f"factorized {len(factorized)} layers")

    quality: dict[str, Any] = {}  # the section's optional keys: what this model measures
    if evaluate_ppl:
        context.progress(0.05, "perplexity after factorization only")
        quality["perplexity_svd"] = perplexity(model, context.evaluation_tokens())
    if evaluate_cos:
        quality["embedding_cosine_svd"] = embedding_cosine(reference, model, context.tokenizer,
                                                           sentences)
    log = None
    if config.train_steps > 0:
        windows = training_tokens(config, context)
        context.progress(0.05, f"training on {windows.shape[0]}x{windows.shape[1]} tokens")
        log = train_pela(model, teacher, windows, config, causal, context.device,
                         _span(context, 0.05, 0.95))
        if evaluate_ppl:
            context.progress(0.95, "perplexity after training")
            quality["perplexity_trained"] = perplexity(model, context.evaluation_tokens())
        if evaluate_cos:
            quality["embedding_cosine_trained"] = embedding_cosine(
                reference, model, context.tokenizer, sentences)
    del teacher

    done = {n: r for n, r in records.items() if r.rank is not None}
    section = LowRankSection(
        init=config.init,
        allocation=config.allocation if config.target_params is not None else None,
        refit=config.refit and config.init == "whitened",
        weighting=config.weighting if config.init == "whitened" else None,
        training_text=(str(config.text or context.calibration.text)
                       if config.train_steps > 0 and context.tokenizer is not None else None),
        layers_targeted=len(layers),
        layers_factorized=len(factorized),
        layers_skipped=skipped,
        ranks={name: layer.rank for name, layer in factorized.items()},
        layers={name: LowRankLayer.model_validate(record, from_attributes=True)
                for name, record in records.items()},
        predicted_error_mean=_mean([r.predicted for r in done.values()]),
        measured_error_mean=_mean([r.measured for r in done.values()
                                   if r.measured is not None]),
        error_vs_original_mean=_mean([r.vs_original for r in done.values()
                                      if r.vs_original is not None]),
        error_after_refit_mean=_mean([r.refit if r.refit_kept else r.vs_original
                                      for r in done.values() if r.refit is not None]),
        refit_kept=sum(r.refit_kept for r in done.values()),
        params_targeted_before=targeted_before,
        params_targeted_after=targeted_after,
        kept_fraction_targeted=targeted_after / targeted_before,
        targeted_share_of_model=targeted_before / model_before,
        params_model_before=model_before,
        params_model_after=model_after,
        parameter_bytes_after=sum(p.numel() * p.element_size() for p in model.parameters()),
        seconds_svd=svd_seconds,
        train=log.summary() if log else None,
        export_dense=config.export_dense,
        **quality,
    )
    if config.export_dense:
        merge_to_dense(model)
    context.progress(1.0, "done")
    details = {
        "init": config.init,
        "layers_factorized": len(factorized),
        "params_targeted_before": targeted_before,
        "params_targeted_after": targeted_after,
        **section.model_dump(mode="json", include=set(quality)),
    }
    # Merging to dense changes the float sums: the pipeline then measures the merged model.
    final = None if config.export_dense else quality.get(
        "perplexity_trained", quality.get("perplexity_svd"))
    charts = [layer_chart("ranks", "Rank per factorized layer", section.ranks, "rank")]
    if done:
        charts.append(error_chart(records))
    if log is not None:
        charts.append(log.chart("pela-loss", "Low-rank training loss (PELA)"))
    return StepResult(details=details, section=section, charts=charts, perplexity=final)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
