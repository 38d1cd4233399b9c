"""The `lowrank` recipe step: choose ranks, factorize by SVD, train with PELA, report.

The frozen original the factorized model learns from is a copy of the model as this step
receives it (for a first step: the loaded checkpoint), so the step also composes after others.
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any

import torch
from torch import nn

from compressors import assets
from compressors.context import StepContext, StepResult
from compressors.evaluate import perplexity
from compressors.lowrank.config import LowRankConfig
from compressors.lowrank.factorize import (
    allocate_energy,
    allocate_uniform,
    rank_for_energy,
    rank_for_ratio,
    reduces_params,
)
from compressors.lowrank.layers import factorize, lowrank_layers, merge_to_dense
from compressors.lowrank.train import train_pela
from compressors.modules import is_quantized, select_layers, weight_matrix

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors count once


def choose_ranks(
    layers: dict[str, nn.Module], config: LowRankConfig
) -> tuple[dict[str, int], dict[str, str]]:
    """(rank per layer to factorize, reason per layer left dense)."""
    shapes = {name: tuple(weight_matrix(layer).shape) for name, layer in layers.items()}
    needs_spectrum = config.energy is not None or (
        config.target_params is not None and config.allocation == "energy")
    spectra = ({name: torch.linalg.svdvals(weight_matrix(layer).detach().float())
                for name, layer in layers.items()} if needs_spectrum else {})
    if config.rank is not None:
        ranks = dict.fromkeys(shapes, config.rank)
    elif config.ratio is not None:
        ranks = {n: rank_for_ratio(out, inp, config.ratio) for n, (out, inp) in shapes.items()}
    elif config.energy is not None:
        ranks = {n: rank_for_energy(spectra[n], config.energy) for n in shapes}
    elif config.allocation == "energy":
        ranks = allocate_energy(spectra, shapes, config.target_params)
    else:
        ranks = allocate_uniform(shapes, config.target_params)
    chosen: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for name, rank in ranks.items():
        out, inp = shapes[name]
        if reduces_params(out, inp, rank):
            chosen[name] = rank
        else:
            skipped[name] = (f"rank {rank} x ({out}+{inp}) >= {out}x{inp}: "
                             "factorizing would not reduce parameters")
    return chosen, skipped


def held_out_sentences(text_spec: str, count: int) -> list[str]:
    """The first `count` sentences of reasonable length in the evaluation text."""
    sentences = []
    for piece in _SENTENCE_END.split(assets.load_text(text_spec)):
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
                     sentences: list[str]) -> dict[str, float]:
    cos = torch.nn.functional.cosine_similarity(
        reference, sentence_embeddings(model, tokenizer, sentences), dim=-1)
    return {"mean": float(cos.mean()), "min": float(cos.min())}


def _is_causal(model: nn.Module) -> bool:
    return model.get_output_embeddings() is not None if hasattr(
        model, "get_output_embeddings") else False


def run_lowrank(model: nn.Module, config: LowRankConfig, context: StepContext) -> StepResult:
    started = time.perf_counter()
    layers = select_layers(model, config.include, config.exclude)
    quantized = [name for name, layer in layers.items() if is_quantized(layer)]
    if quantized:
        raise ValueError(f"lowrank: layers {quantized[:3]} are quantized; put lowrank before "
                         "quantize in the recipe")
    if not layers:
        raise ValueError("include/exclude: no Linear layer matches; nothing to factorize")
    causal = _is_causal(model)
    targeted_before = sum(weight_matrix(layer).numel() for layer in layers.values())
    model_before = _count(model)
    context.progress(0.0, f"choosing ranks for {len(layers)} layers")
    ranks, skipped = choose_ranks(layers, config)

    evaluate_ppl = config.evaluate and causal and context.evaluation.windows > 0
    evaluate_cos = config.evaluate and not causal
    teacher = copy.deepcopy(model).eval() if (config.steps > 0 or evaluate_cos) else None
    sentences: list[str] = []
    reference = None
    if evaluate_cos:
        sentences = held_out_sentences(context.evaluation.text, config.cosine_sentences)
        reference = sentence_embeddings(teacher, context.tokenizer, sentences)

    factorize(model, layers, ranks)
    factorized = lowrank_layers(model)
    targeted_after = (sum(layer.up.numel() + layer.down.numel() for layer in factorized.values())
                      + sum(weight_matrix(layers[name]).numel() for name in skipped))
    model_after = _count(model)
    svd_seconds = time.perf_counter() - started
    context.progress(0.05, f"factorized {len(factorized)} layers")

    quality: dict[str, Any] = {}
    if evaluate_ppl:
        context.progress(0.05, "perplexity after SVD only")
        quality["perplexity_svd"] = perplexity(model, context.evaluation_windows)
    if evaluate_cos:
        quality["embedding_cosine_svd"] = embedding_cosine(reference, model, context.tokenizer,
                                                           sentences)
    log = None
    if config.steps > 0:
        windows = context.calibration_windows
        context.progress(0.05, f"training on {windows.shape[0]}x{windows.shape[1]} tokens")
        span = 0.05, 0.95

        def progress(fraction: float, message: str) -> None:
            context.progress(span[0] + (span[1] - span[0]) * fraction, message)

        log = train_pela(model, teacher, windows, config, causal, context.device, progress)
        if evaluate_ppl:
            context.progress(0.95, "perplexity after training")
            quality["perplexity_trained"] = perplexity(model, context.evaluation_windows)
        if evaluate_cos:
            quality["embedding_cosine_trained"] = embedding_cosine(
                reference, model, context.tokenizer, sentences)
    del teacher

    section: dict[str, Any] = {
        "layers_targeted": len(layers),
        "layers_factorized": len(factorized),
        "layers_skipped": skipped,
        "ranks": {name: layer.rank for name, layer in factorized.items()},
        "params_targeted_before": targeted_before,
        "params_targeted_after": targeted_after,
        "kept_fraction_targeted": targeted_after / targeted_before,
        "targeted_share_of_model": targeted_before / model_before,
        "params_model_before": model_before,
        "params_model_after": model_after,
        "parameter_bytes_after": sum(p.numel() * p.element_size() for p in model.parameters()),
        "seconds_svd": svd_seconds,
        "seconds_train": log.seconds if log else 0.0,
        "train": log.summary() if log else None,
        "export_dense": config.export_dense,
        **quality,
    }
    if config.export_dense:
        merge_to_dense(model)
    context.progress(1.0, "done")
    details = {
        "layers_factorized": len(factorized),
        "params_targeted_before": targeted_before,
        "params_targeted_after": targeted_after,
        **{k: v for k, v in quality.items()},
    }
    # Merging to dense changes the float sums: the pipeline then measures the merged model.
    final = None if config.export_dense else quality.get(
        "perplexity_trained", quality.get("perplexity_svd"))
    return StepResult(details=details, sections={"lowrank": section}, perplexity=final)
