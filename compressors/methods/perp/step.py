"""The `perp` step: retrain a pruned model's biases, norms and sparse adapters, then merge.

Order of work: find the masks (left by the pruning step, else the current zeros), measure
perplexity of the pruned model, wrap the pruned layers in adapters, train (the shared loop in
`engine.training`, with one of the two objectives below), merge, verify that every layer's
nonzero pattern is exactly its mask, measure again. A mask that changed is a bug, so it raises
instead of publishing a checkpoint with different sparsity.

Objectives:
- `lm`: next-token loss of the whole model on training windows of the training text;
- `reconstruct`: block by block on the sequential engine, each pruned block fitted (MSE) to
  the dense block's outputs on the same inputs; block k sees the outputs of the already
  retrained blocks 0..k-1.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from compressors.engine.context import StepContext, StepResult
from compressors.engine.experts import expert_layers
from compressors.engine.layers import ExpertLayer
from compressors.engine.modules import (
    find_blocks,
    is_causal_lm,
    linear_layers,
    select_layers,
    weight_matrix,
)
from compressors.engine.sections import SegmentLoss
from compressors.engine.sequential import BlockContext, block_output, run_sequential
from compressors.engine.training import (
    TrainLog,
    cycling_batches,
    frozen_after,
    set_checkpointing,
    train,
)
from compressors.engine.windows import text_random_windows, text_sequential_windows
from compressors.evaluate import perplexity
from compressors.methods.perp import lora_math
from compressors.methods.perp.adapters import (
    AdaptedLayer,
    merge_adapters,
    select_trainable,
    unique_parameter_count,
    wrap_layers,
    wrap_lm_head,
)
from compressors.methods.perp.config import PerpConfig
from compressors.methods.perp.expert_adapters import ExpertAdapters, merge_experts, wrap_experts
from compressors.methods.perp.section import PerplexityPair, RetrainingSection


def current_masks(model: nn.Module, context: StepContext) -> dict[str, torch.Tensor]:
    """Keep-masks of the pruned layers: recorded ones, intersected with the current nonzeros.

    Without recorded masks (no pruning step in this recipe, e.g. a checkpoint pruned earlier),
    the default layer selection's current zeros are the mask.
    """
    recorded = context.masks
    every = linear_layers(model)  # expert matrices too: their masks are kept like any other
    layers = {n: every[n] for n in recorded} if recorded else select_layers(model)
    masks = {}
    for name, layer in layers.items():
        nonzero = (weight_matrix(layer) != 0).cpu()
        masks[name] = recorded[name] & nonzero if name in recorded else nonzero
    return masks


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


def run(model: nn.Module, config: PerpConfig, context: StepContext) -> StepResult:
    if not is_causal_lm(model):
        raise ValueError("perp: needs a causal language model (one with an output embedding)")
    masks = current_masks(model, context)
    total_params = unique_parameter_count(model)
    eval_sets: dict[str, torch.Tensor] = {}
    if config.evaluate and context.evaluation.windows > 0:
        eval_sets["evaluation"] = context.evaluation_tokens()
        eval_sets["second_text"] = text_sequential_windows(
            context.tokenizer, config.second_text, context.evaluation.windows,
            context.evaluation.seqlen,
        )
    progress = context.progress
    before = _perplexities(model, eval_sets, progress, 0.0, 0.1) if eval_sets else {}

    every = linear_layers(model)
    wrapped: dict[str, AdaptedLayer] = {}
    experts: list[ExpertAdapters] = []
    if config.mode != "norms":
        generator = torch.Generator().manual_seed(config.seed)
        modules = {n: every[n] for n in masks if not isinstance(every[n], ExpertLayer)}
        wrapped = wrap_layers(model, modules, masks, config.mode, config.rank, config.alpha,
                              config.seed)
        experts = wrap_experts({n: every[n] for n in masks if n not in modules}, masks,
                               config.mode, config.rank, config.alpha, generator)
    if config.lm_head_adapter:
        wrapped.update(wrap_lm_head(model, config.rank, config.alpha, config.seed))
    text = config.text or context.calibration.text
    train_progress = lambda f, m: progress(0.1 + 0.8 * f, m)  # noqa: E731
    started = time.perf_counter()
    try:
        with frozen_after(model):
            if config.objective == "lm":
                log = _train_lm(model, config, context, text, train_progress)
            else:
                log = _train_reconstruct(model, config, context, text, masks, train_progress)
    finally:
        merge_adapters(model, wrapped)
        merge_experts(experts)
    seconds = time.perf_counter() - started
    model.eval()
    _check_masks(model, masks)
    after = _perplexities(model, eval_sets, progress, 0.9, 0.1) if eval_sets else {}
    progress(1.0, "retraining done")

    section = _section(config, text, log, seconds, total_params, masks, before, after)
    details = section.model_dump(include={"mode", "objective", "trainable_parameters",
                                          "trainable_percent", "steps", "tokens",
                                          "masks_preserved"})
    return StepResult(details=details, section=section,
                      charts=[log.chart("perp-loss", "Retraining loss (PERP)")],
                      perplexity=after.get("evaluation"))


def _train_lm(model: nn.Module, config: PerpConfig, context: StepContext, text: str,
              progress) -> TrainLog:
    """Next-token loss on the training text; trains biases, norms and adapters of the model."""
    device = next(model.parameters()).device
    params = select_trainable(model)
    windows = text_random_windows(context.tokenizer, text,
                                  config.train_steps * config.batch_size, config.seqlen,
                                  config.seed)

    def step_loss(step: int) -> tuple[dict[str, torch.Tensor], int]:
        ids = cycling_batches(windows, config.batch_size, step).to(device)
        with parametrize.cached():  # adapted expert parameters: formed once per forward
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        return {"total": loss}, ids.numel()

    checkpointing = config.gradient_checkpointing and hasattr(
        model, "gradient_checkpointing_enable")
    if checkpointing:
        set_checkpointing(model, True)
    was_training = model.training
    model.train()
    try:
        return train(params, config, step_loss, device, progress)
    finally:
        if checkpointing:
            set_checkpointing(model, False)
        model.train(was_training)


def _train_reconstruct(
    model: nn.Module, config: PerpConfig, context: StepContext, text: str,
    masks: dict[str, torch.Tensor], progress,
) -> TrainLog:
    """Fit each pruned block to the dense original's block on the same inputs."""
    from compressors.io.loading import load_model

    device = next(model.parameters()).device
    dense = load_model(context.model_source).model.to(device).eval()
    samples = config.samples or context.calibration.samples
    windows = text_random_windows(context.tokenizer, text, samples, config.seqlen, config.seed)
    every = {**dict(model.named_modules()), **expert_layers(model)}  # adapters under their names
    _, dense_blocks = find_blocks(dense)
    log = TrainLog()

    def process_block(ctx: BlockContext) -> None:
        with torch.no_grad():
            dense_block = dense_blocks[ctx.index]
            wanted = [block_output(dense_block(b.hidden, *b.args, **b.kwargs)).detach()
                      for b in ctx.inputs]
        params = select_trainable(ctx.block)

        def step_loss(step: int) -> tuple[dict[str, torch.Tensor], int]:
            which = step % len(ctx.inputs)
            batch = ctx.inputs[which]
            with parametrize.cached():
                out = block_output(ctx.block(batch.hidden, *batch.args, **batch.kwargs))
            loss = F.mse_loss(out.float(), wanted[which].float())
            return {"total": loss}, batch.hidden.shape[0] * batch.hidden.shape[1]

        ctx.block.train()
        try:
            block_log = train(params, config, step_loss, device, lambda _f, _m: None)
        finally:
            ctx.block.eval()
            for param in params:
                param.requires_grad_(False)
        log.extend(block_log)
        log.segments.append(SegmentLoss(block=ctx.name, first_loss=block_log.total[0],
                                        last_loss=block_log.total[-1]))

    try:
        run_sequential(model, windows, {n: every[n] for n in masks}, process_block, progress,
                       batch_size=config.batch_size)
    finally:
        del dense
    return log


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    every = linear_layers(model)
    changed = [n for n, mask in masks.items()
               if not lora_math.sparsity_preserved(weight_matrix(every[n]), mask)]
    if changed:
        raise RuntimeError(f"perp: the nonzero pattern changed in {changed}; not publishing")


def _section(
    config: PerpConfig, text: str, log: TrainLog, seconds: float, total: int,
    masks: dict[str, torch.Tensor], before: dict[str, float], after: dict[str, float],
) -> RetrainingSection:
    perplexities = {
        name: PerplexityPair(text="evaluation" if name == "evaluation" else config.second_text,
                             pruned=before[name], retrained=after[name])
        for name in before
    }
    trainable = log.trainable_parameters
    return RetrainingSection(
        mode=config.mode, objective=config.objective, training_text=text,
        layers_adapted=len(masks) if config.mode != "norms" else 0,
        lm_head_adapter=config.lm_head_adapter, trainable_parameters=trainable,
        model_parameters=total, trainable_percent=100.0 * trainable / total,
        steps=log.steps, tokens=log.tokens, seconds=seconds, train=log.summary(),
        block_losses=log.segments or None, perplexity=perplexities or None,
        masks_preserved=True,
        pruned_weights=int(sum(int((~m).sum()) for m in masks.values())),
    )
