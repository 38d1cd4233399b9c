"""PELA training: only the low-rank factors (optionally norms) learn, against the frozen original.

loss = lm_weight · next-token loss on calibration text (causal LMs)
     + α · feature distillation (every block's hidden states vs the original's, same input)
     + λ · weight perturbation (‖up@down − W‖²/‖W‖², averaged over factorized layers)

Both models see the same tokens; the original runs without gradients. AdamW with linear
warm-up and cosine decay, gradient norm clipped at 1. On CUDA the forward runs under bf16
autocast (weights and optimizer stay fp32); on CPU it is plain fp32.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressors.lowrank.config import LowRankConfig
from compressors.lowrank.factorize import feature_loss, perturbation_loss
from compressors.lowrank.layers import lowrank_layers
from compressors.modules import weight_matrix

ProgressFn = Callable[[float, str], None]


@dataclass
class TrainLog:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    trainable_parameters: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        first = self.losses[0] if self.losses else None
        last = self.losses[-1] if self.losses else None
        return {"steps": self.steps, "tokens": self.tokens, "seconds": self.seconds,
                "trainable_parameters": self.trainable_parameters,
                "loss_first": first, "loss_last": last,
                "total_loss": [round(x["total"], 5) for x in self.losses]}


def lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


def select_trainable(model: nn.Module, train_norms: bool) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the factors (and norms when asked)."""
    for param in model.parameters():
        param.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in lowrank_layers(model).values():
        params += [layer.up, layer.down]
    if train_norms:
        for module in model.modules():
            if _is_norm(module):
                params += [p for p in module.parameters(recurse=False)]
    for param in params:
        param.requires_grad_(True)
    return params


def training_windows(windows: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Cut calibration windows into `seqlen` pieces (longer pieces are cropped to it)."""
    if windows.shape[1] <= seqlen:
        return windows
    pieces = windows.shape[1] // seqlen
    return windows[:, : pieces * seqlen].reshape(-1, seqlen)


def _forward(model: nn.Module, ids: torch.Tensor, causal: bool) -> Any:
    kwargs: dict[str, Any] = {"input_ids": ids, "output_hidden_states": True}
    if causal:
        kwargs["use_cache"] = False
    return model(**kwargs)


def pela_loss(
    student_out: Any, teacher_out: Any, ids: torch.Tensor, causal: bool,
    pairs: list[tuple[nn.Module, torch.Tensor]], config: LowRankConfig,
) -> dict[str, torch.Tensor]:
    """The three PELA terms and their weighted total, as tensors (total carries the graph)."""
    zero = ids.new_zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {"lm": zero, "distill": zero, "perturbation": zero}
    if causal and config.lm_weight > 0:
        logits = student_out.logits[:, :-1].float()
        terms["lm"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    if config.distill_alpha > 0:
        student_h, teacher_h = student_out.hidden_states[1:], teacher_out.hidden_states[1:]
        terms["distill"] = torch.stack(
            [feature_loss(s, t) for s, t in zip(student_h, teacher_h, strict=True)]
        ).mean()
    if config.perturbation_lambda > 0 and pairs:
        terms["perturbation"] = torch.stack(
            [perturbation_loss(layer.up, layer.down, original) for layer, original in pairs]
        ).mean()
    lm_weight = config.lm_weight if causal else 0.0
    terms["total"] = (lm_weight * terms["lm"] + config.distill_alpha * terms["distill"]
                      + config.perturbation_lambda * terms["perturbation"])
    return terms


def train_pela(
    student: nn.Module, teacher: nn.Module, windows: torch.Tensor, config: LowRankConfig,
    causal: bool, device: torch.device, progress: ProgressFn,
) -> TrainLog:
    """Run `config.steps` optimizer steps; the teacher must hold the original dense layers
    under the same names as the student's factorized ones."""
    log = TrainLog()
    if config.steps == 0:
        return log
    before = {id(p): p.requires_grad for p in student.parameters()}
    params = select_trainable(student, config.train_norms)
    for param in teacher.parameters():
        param.requires_grad_(False)
    log.trainable_parameters = sum(p.numel() for p in params)
    teacher_modules = dict(teacher.named_modules())
    pairs = [(layer, weight_matrix(teacher_modules[name]).detach())
             for name, layer in lowrank_layers(student).items()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config.steps, config.warmup))
    data = training_windows(windows, config.seqlen)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(data.shape[0], generator=generator)
    cuda = device.type == "cuda"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda
                else contextlib.nullcontext())
    # Eval mode on both: dropout would only add noise to a short distillation run.
    was_training = student.training
    student.eval()
    teacher.eval()

    started = time.perf_counter()
    cursor = 0
    try:
        for step in range(config.steps):
            rows = [int(order[(cursor + i) % len(order)]) for i in range(config.batch_size)]
            cursor += config.batch_size
            ids = data[rows].to(device)
            with autocast:
                with torch.no_grad():
                    teacher_out = _forward(teacher, ids, causal)
                student_out = _forward(student, ids, causal)
                terms = pela_loss(student_out, teacher_out, ids, causal, pairs, config)
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.losses.append({k: float(v.detach()) for k, v in terms.items()})
            log.steps += 1
            log.tokens += ids.numel()
            progress((step + 1) / config.steps,
                     f"step {step + 1}/{config.steps} loss {log.losses[-1]['total']:.4f}")
    finally:
        for param in student.parameters():
            param.requires_grad_(before.get(id(param), False))
        student.train(was_training)
    log.seconds = time.perf_counter() - started
    return log
