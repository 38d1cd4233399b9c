"""The two PERP training loops: whole-model language modelling, and block-wise reconstruction.

Both train only the parameters `adapters.select_trainable` leaves unfrozen, with AdamW and a
warm-up + decay schedule. On a GPU the forward runs under bf16 (fp16 with a loss scaler where
bf16 is unsupported) autocast while the weights and the optimizer stay fp32; on CPU it is plain
fp32, because CPU autocast is slower than fp32 there and changes results for no gain.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressors.modules import find_blocks
from compressors.retraining.adapters import select_trainable
from compressors.retraining.config import PerpConfig
from compressors.sequential import BlockContext, run_sequential

ProgressFn = Callable[[float, str], None]


@dataclass
class TrainLog:
    """What the report shows of a training run."""

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    blocks: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Precision:
    """Autocast + loss scaling for CUDA; a no-op on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.dtype = None
        self.scaler = None
        if self.cuda:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.cuda:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _optimizer(params: list[nn.Parameter], config: PerpConfig):
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup, config.schedule)
    )
    return optimizer, scheduler


def _batches(windows: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Cycle through the windows in order, `batch_size` at a time."""
    index = 0
    while True:
        rows = [(index + i) % windows.shape[0] for i in range(batch_size)]
        index = (index + batch_size) % windows.shape[0]
        yield windows[rows]


def train_lm(
    model: nn.Module, windows: torch.Tensor, config: PerpConfig, device: torch.device,
    progress: ProgressFn,
) -> TrainLog:
    """Next-token loss on `windows`; trains biases, norms and adapters of the whole model."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(params, config)
    precision = Precision(device)
    log = TrainLog()
    checkpointing = config.gradient_checkpointing and hasattr(
        model, "gradient_checkpointing_enable"
    )
    if checkpointing:
        _set_checkpointing(model, True)
    was_training = model.training
    model.train()
    started = time.perf_counter()
    try:
        batches = _batches(windows, config.batch_size)
        for step in range(config.steps):
            ids = next(batches).to(device)
            with precision.autocast():
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            precision.step(loss, optimizer)
            scheduler.step()
            log.losses.append(float(loss.detach()))
            log.tokens += ids.numel()
            log.steps += 1
            progress((step + 1) / config.steps, f"step {step + 1}/{config.steps} "
                     f"loss {log.losses[-1]:.4f}")
    finally:
        if checkpointing:
            _set_checkpointing(model, False)
        model.train(was_training)
    log.seconds = time.perf_counter() - started
    return log


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """Non-reentrant checkpointing: with frozen embeddings no block input needs grad, and the
    reentrant variant would then silently give the adapters no gradient."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def _block_output(result: Any) -> torch.Tensor:
    return result[0] if isinstance(result, tuple | list) else result


def train_reconstruct(
    model: nn.Module, dense: nn.Module, windows: torch.Tensor, targets: dict[str, nn.Module],
    config: PerpConfig, device: torch.device, progress: ProgressFn,
) -> TrainLog:
    """Block by block: fit each pruned block's trainable groups to the dense block (MSE).

    The shared sequential engine feeds block k the outputs of the already-retrained blocks
    0..k-1; the dense model's block k, run on those same inputs, gives the targets. Only
    parameters inside block k train while it is processed.
    """
    _, dense_blocks = find_blocks(dense)
    precision = Precision(device)
    log = TrainLog()
    started = time.perf_counter()

    def process_block(ctx: BlockContext) -> None:
        with torch.no_grad():
            dense_block = dense_blocks[ctx.index]
            wanted = [
                _block_output(dense_block(b.hidden, *b.args, **b.kwargs)).detach()
                for b in ctx.inputs
            ]
        params = select_trainable(ctx.block)
        optimizer, scheduler = _optimizer(params, config)
        losses: list[float] = []
        ctx.block.train()
        try:
            for step in range(config.steps):
                which = step % len(ctx.inputs)
                batch = ctx.inputs[which]
                with precision.autocast():
                    out = _block_output(ctx.block(batch.hidden, *batch.args, **batch.kwargs))
                    loss = F.mse_loss(out.float(), wanted[which].float())
                precision.step(loss, optimizer)
                scheduler.step()
                losses.append(float(loss.detach()))
                log.tokens += batch.hidden.shape[0] * batch.hidden.shape[1]
                log.steps += 1
        finally:
            ctx.block.eval()
            for param in params:
                param.requires_grad_(False)
        log.losses.extend(losses)
        log.blocks.append({"block": ctx.name, "first_loss": losses[0], "last_loss": losses[-1]})

    run_sequential(model, windows, targets, process_block, progress, batch_size=config.batch_size)
    log.seconds = time.perf_counter() - started
    return log
