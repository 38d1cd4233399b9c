"""The `perp` step: retrain a pruned model's biases, norms and sparse adapters, then merge.

Order of work: find the masks (left by the pruning step, else the current zeros), measure
perplexity of the pruned model, wrap the pruned layers in adapters, train, merge, verify that
every layer's nonzero pattern is exactly its mask, measure again. A mask that changed is a bug,
so it raises instead of publishing a checkpoint with different sparsity.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from compressors.context import StepContext, StepResult
from compressors.evaluate import perplexity
from compressors.modules import find_blocks, layers_in_block, select_layers, weight_matrix
from compressors.retraining import lora_math, texts
from compressors.retraining.adapters import (
    AdaptedLayer,
    merge_adapters,
    select_trainable,
    unique_parameter_count,
    wrap_layers,
    wrap_lm_head,
)
from compressors.retraining.config import PerpConfig
from compressors.retraining.train import TrainLog, train_lm, train_reconstruct

_MAX_CURVE_POINTS = 200


def current_masks(model: nn.Module, context: StepContext) -> dict[str, torch.Tensor]:
    """Keep-masks of the pruned layers: recorded ones, intersected with the current nonzeros.

    Without recorded masks (no pruning step in this recipe, e.g. a checkpoint pruned earlier),
    the default layer selection's current zeros are the mask.
    """
    recorded: dict[str, torch.Tensor] = context.state.get("masks") or {}
    modules = dict(model.named_modules())
    layers = {n: modules[n] for n in recorded} if recorded else select_layers(model)
    masks = {}
    for name, layer in layers.items():
        nonzero = (weight_matrix(layer) != 0).cpu()
        masks[name] = recorded[name] & nonzero if name in recorded else nonzero
    return masks


def _is_causal(model: nn.Module) -> bool:
    getter = getattr(model, "get_output_embeddings", None)
    return getter is not None and getter() is not None


def _perplexities(
    model: nn.Module, windows: dict[str, torch.Tensor], progress, start: float, span: float
) -> dict[str, float]:
    values = {}
    for index, (name, batch) in enumerate(windows.items()):
        share = span / len(windows)
        offset = start + index * share
        values[name] = perplexity(
            model, batch, lambda f, m, o=offset, s=share: progress(o + f * s, f"perplexity {m}")
        )
    return values


def _curve(losses: list[float]) -> list[list[float]]:
    """[[step, loss], ...], thinned to at most `_MAX_CURVE_POINTS` evenly spaced points."""
    if not losses:
        return []
    stride = max(1, -(-len(losses) // _MAX_CURVE_POINTS))
    points = [[i + 1, round(loss, 6)] for i, loss in enumerate(losses) if i % stride == 0]
    if points[-1][0] != len(losses):
        points.append([len(losses), round(losses[-1], 6)])
    return points


def run_perp(model: nn.Module, config: PerpConfig, context: StepContext) -> StepResult:
    if not _is_causal(model):
        raise ValueError("perp: needs a causal language model (one with an output embedding)")
    device = next(model.parameters()).device
    masks = current_masks(model, context)
    if not masks:
        raise ValueError("perp: no Linear-like layers to retrain were found")
    total_params = unique_parameter_count(model)

    eval_sets: dict[str, torch.Tensor] = {}
    if config.evaluate and context.evaluation.windows > 0:
        eval_sets["evaluation"] = context.evaluation_windows
        eval_sets["second_text"] = texts.evaluation_windows(
            context.tokenizer, config.second_text, context.evaluation.windows,
            context.evaluation.seqlen,
        )
    progress = context.progress
    before = _perplexities(model, eval_sets, progress, 0.0, 0.1) if eval_sets else {}

    modules = dict(model.named_modules())
    wrapped: dict[str, AdaptedLayer] = {}
    if config.mode != "norms":
        wrapped = wrap_layers(model, {n: modules[n] for n in masks}, masks, config.mode,
                              config.rank, config.alpha, config.seed)
    if config.lm_head_adapter:
        wrapped.update(wrap_lm_head(model, config.rank, config.alpha, config.seed))
    text = config.text or context.calibration.text
    train_progress = lambda f, m: progress(0.1 + 0.8 * f, m)  # noqa: E731
    started = time.perf_counter()
    try:
        if config.objective == "lm":
            trainable = select_trainable(model)
            windows = texts.training_windows(
                context.tokenizer, text, config.steps * config.batch_size, config.seqlen,
                config.seed,
            )
            log = train_lm(model, windows, config, device, train_progress)
        else:
            trainable = _reconstruct_trainable(model, masks)
            log = _reconstruct(model, config, context, text, masks, device, train_progress)
    finally:
        for param in model.parameters():
            param.requires_grad_(False)
        merge_adapters(model, wrapped)
    seconds = time.perf_counter() - started
    model.eval()
    _check_masks(model, masks)
    after = _perplexities(model, eval_sets, progress, 0.9, 0.1) if eval_sets else {}
    progress(1.0, "retraining done")

    trainable_count = sum(p.numel() for p in trainable)
    section = _section(config, text, log, seconds, trainable_count, total_params, masks,
                       before, after)
    details = {k: section[k] for k in ("mode", "objective", "trainable_parameters",
                                       "trainable_percent", "steps", "tokens", "masks_preserved")}
    return StepResult(details=details, sections={"retraining": section},
                      perplexity=after.get("evaluation"))


def _reconstruct_trainable(model: nn.Module, masks: dict[str, torch.Tensor]) -> list:
    prefix, blocks = find_blocks(model)
    params: list[nn.Parameter] = []
    for index, block in enumerate(blocks):
        if layers_in_block(masks, f"{prefix}.{index}"):
            params.extend(select_trainable(block))
    return params


def _reconstruct(
    model: nn.Module, config: PerpConfig, context: StepContext, text: str,
    masks: dict[str, torch.Tensor], device: torch.device, progress,
) -> TrainLog:
    from compressors.model_io import load_model

    dense = load_model(context.model_source).model.to(device)
    dense.eval()
    samples = config.samples or context.calibration.samples
    windows = texts.training_windows(context.tokenizer, text, samples, config.seqlen, config.seed)
    modules = dict(model.named_modules())
    for param in model.parameters():
        param.requires_grad_(False)
    try:
        return train_reconstruct(model, dense, windows, {n: modules[n] for n in masks}, config,
                                 device, progress)
    finally:
        del dense


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    changed = [n for n, mask in masks.items()
               if not lora_math.sparsity_preserved(weight_matrix(modules[n]), mask)]
    if changed:
        raise RuntimeError(f"perp: the nonzero pattern changed in {changed}; not publishing")


def _section(
    config: PerpConfig, text: str, log: TrainLog, seconds: float, trainable: int, total: int,
    masks: dict[str, torch.Tensor], before: dict[str, float], after: dict[str, float],
) -> dict[str, Any]:
    perplexities = {
        name: {
            "text": "evaluation" if name == "evaluation" else config.second_text,
            "pruned": before[name],
            "retrained": after[name],
        }
        for name in before
    }
    return {
        "mode": config.mode,
        "objective": config.objective,
        "training_text": text,
        "layers_adapted": len(masks) if config.mode != "norms" else 0,
        "lm_head_adapter": config.lm_head_adapter,
        "trainable_parameters": trainable,
        "model_parameters": total,
        "trainable_percent": 100.0 * trainable / total,
        "steps": log.steps,
        "tokens": log.tokens,
        "seconds": seconds,
        "loss_curve": _curve(log.losses),
        "block_losses": log.blocks or None,
        "perplexity": perplexities or None,
        "masks_preserved": True,
        "pruned_weights": int(sum(int((~m).sum()) for m in masks.values())),
    }
