"""PELA training: only the low-rank factors (optionally norms) learn, against the frozen original.

loss = lm_weight · next-token loss on calibration text (causal LMs)
     + α · feature distillation (every block's hidden states vs the original's, same input)
     + λ · weight perturbation (‖up@down − W‖²/‖W‖², averaged over factorized layers)

Both models see the same tokens; the original runs without gradients. The optimizer, schedule,
precision and log are the shared loop's (`engine.training`), with the gradient norm clipped
at 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compressors.engine.modules import weight_matrix
from compressors.engine.training import TrainLog, norm_parameters, train, unfreeze_only
from compressors.methods.lowrank.config import LowRankConfig
from compressors.methods.lowrank.factorize import feature_loss, perturbation_loss
from compressors.methods.lowrank.layers import lowrank_layers

ProgressFn = Callable[[float, str], None]


def select_trainable(model: nn.Module, train_norms: bool) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the factors (and norms when asked)."""
    params = [p for layer in lowrank_layers(model).values() for p in (layer.up, layer.down)]
    if train_norms:
        params += norm_parameters(model)
    return unfreeze_only(model, params)


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
    """Run `config.train_steps` optimizer steps on the shared loop; the teacher must hold the
    original dense layers under the same names as the student's factorized ones."""
    before = {id(p): p.requires_grad for p in student.parameters()}
    params = select_trainable(student, config.train_norms)
    for param in teacher.parameters():
        param.requires_grad_(False)
    teacher_modules = dict(teacher.named_modules())
    pairs = [(layer, weight_matrix(teacher_modules[name]).detach())
             for name, layer in lowrank_layers(student).items()]
    data = training_windows(windows, config.seqlen)
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(config.seed))

    def step_loss(step: int) -> tuple[dict[str, torch.Tensor], int]:
        rows = [int(order[(step * config.batch_size + i) % len(order)])
                for i in range(config.batch_size)]
        ids = data[rows].to(device)
        with torch.no_grad():
            teacher_out = _forward(teacher, ids, causal)
        student_out = _forward(student, ids, causal)
        return pela_loss(student_out, teacher_out, ids, causal, pairs, config), ids.numel()

    # Eval mode on both: dropout would only add noise to a short distillation run.
    was_training = student.training
    student.eval()
    teacher.eval()
    try:
        return train(params, config, step_loss, device, progress, clip_norm=1.0)
    finally:
        for param in student.parameters():
            param.requires_grad_(before.get(id(param), False))
        student.train(was_training)
