"""The one training loop every method that trains uses (PERP, PELA), with its parts.

A method supplies the parameters to train and a function that computes the loss terms of one
optimizer step; this module owns everything else, so the methods cannot drift apart: AdamW with
linear warm-up and a decay schedule (`recipe.fields.TrainingConfig`), the precision policy, the
optimizer step with optional gradient clipping, progress, and the log that becomes the report's
loss curve (`TrainLog.curves`, thinned to `report.charts.MAX_CURVE_POINTS` points).

Precision: on CUDA the forward runs under bf16 autocast (fp16 with a loss scaler where bf16 is
unsupported) while the trained parameters and the optimizer stay fp32; on CPU it is plain fp32,
because CPU autocast is slower than fp32 there and changes results for no gain.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressors.engine.sections import SegmentLoss, TrainSummary
from compressors.recipe.fields import TrainingConfig
from compressors.report.charts import line_chart
from compressors.report.schema import Chart

ProgressFn = Callable[[float, str], None]
# One optimizer step's loss terms (the key "total" is what is minimised) and tokens seen.
StepLoss = Callable[[int], tuple[dict[str, torch.Tensor], int]]


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
        self.dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        if self.cuda:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.cuda:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             params: list[nn.Parameter], clip_norm: float | None) -> None:
        """Backward, optional clipping (on unscaled gradients), optimizer step, zero grads."""
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip_norm is not None:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@dataclass
class TrainLog:
    """What the report shows of a training run: per-step values of every loss term."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0
    terms: dict[str, list[float]] = field(default_factory=dict)
    # Per-part results of a run trained in parts (PERP reconstruct: one entry per block).
    segments: list[SegmentLoss] = field(default_factory=list)

    def record(self, terms: dict[str, torch.Tensor], tokens: int) -> None:
        for name, value in terms.items():
            self.terms.setdefault(name, []).append(float(value.detach()))
        self.steps += 1
        self.tokens += tokens

    def extend(self, other: TrainLog) -> None:
        """Append a later run (e.g. the next block's) to this log."""
        for name, values in other.terms.items():
            self.terms.setdefault(name, []).extend(values)
        self.steps += other.steps
        self.tokens += other.tokens
        self.seconds += other.seconds
        self.trainable_parameters += other.trainable_parameters

    @property
    def total(self) -> list[float]:
        return self.terms.get("total", [])

    def summary(self) -> TrainSummary:
        """Steps, tokens, seconds and the first and last value of every term."""
        first = {k: v[0] for k, v in self.terms.items() if v}
        last = {k: v[-1] for k, v in self.terms.items() if v}
        return TrainSummary(steps=self.steps, tokens=self.tokens, seconds=self.seconds,
                            trainable_parameters=self.trainable_parameters,
                            loss_first=first or None, loss_last=last or None)

    def chart(self, chart_id: str, title: str) -> Chart:
        """Every term's curve (the total first), on a log axis."""
        ordered = {"total": self.total, **{k: v for k, v in self.terms.items() if k != "total"}}
        return line_chart(chart_id, title, ordered)


def make_optimizer(
    params: list[nn.Parameter], config: TrainingConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, config.train_steps, config.warmup_steps, config.schedule),
    )
    return optimizer, scheduler


def train(
    params: list[nn.Parameter], config: TrainingConfig, step_loss: StepLoss,
    device: torch.device, progress: ProgressFn, clip_norm: float | None = None,
) -> TrainLog:
    """Run `config.train_steps` optimizer steps of `step_loss` on `params`."""
    log = TrainLog(trainable_parameters=sum(p.numel() for p in params))
    if config.train_steps == 0 or not params:
        return log
    optimizer, scheduler = make_optimizer(params, config)
    precision = Precision(device)
    started = time.perf_counter()
    for step in range(config.train_steps):
        with precision.autocast():
            terms, tokens = step_loss(step)
        precision.step(terms["total"], optimizer, params, clip_norm)
        scheduler.step()
        log.record(terms, tokens)
        progress((step + 1) / config.train_steps,
                 f"step {step + 1}/{config.train_steps} loss {log.total[-1]:.4f}")
    log.seconds = time.perf_counter() - started
    return log


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and architecture-specific norms (LlamaRMSNorm, ...), by class name."""
    name = type(module).__name__.lower()
    return isinstance(module, nn.LayerNorm | nn.GroupNorm) or "norm" in name


def unfreeze_only(root: nn.Module, chosen: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Freeze everything under `root`, then unfreeze `chosen` (each shared tensor once)."""
    for param in root.parameters():
        param.requires_grad_(False)
    unique = list({id(p): p for p in chosen}.values())
    for param in unique:
        param.requires_grad_(True)
    return unique


def norm_parameters(root: nn.Module) -> list[nn.Parameter]:
    return [p for m in root.modules() if is_norm(m) for p in m.parameters(recurse=False)]


@contextlib.contextmanager
def frozen_after(model: nn.Module) -> Any:
    """Whatever a training run leaves trainable is frozen again afterwards."""
    try:
        yield
    finally:
        for param in model.parameters():
            param.requires_grad_(False)


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Non-reentrant activation checkpointing: with frozen embeddings no block input needs
    grad, and the reentrant variant would then silently give the adapters no gradient."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        if on:
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def cycling_batches(windows: torch.Tensor, batch_size: int, step: int) -> torch.Tensor:
    """The `step`-th batch when cycling through `windows` in order, `batch_size` at a time."""
    rows = [(step * batch_size + i) % windows.shape[0] for i in range(batch_size)]
    return windows[rows]
