"""Pure tensor math of PELA: truncated SVD, rank rules, rank allocation, and the losses.

Nothing here knows about models or layers, so every rule can be tested on plain matrices.
A layer `[out, in]` at rank r costs r*(in+out) parameters instead of in*out; it only pays
while r < in*out/(in+out), the *break-even* rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank at which the two factors cost exactly as much as the dense matrix."""
    return out_features * in_features / (out_features + in_features)


def reduces_params(out_features: int, in_features: int, rank: int) -> bool:
    return rank * (out_features + in_features) < out_features * in_features


def rank_for_ratio(out_features: int, in_features: int, ratio: float) -> int:
    """PELA's rule r = in*out / (ratio*(in+out)), at least 1."""
    return max(1, int(break_even_rank(out_features, in_features) / ratio))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest r whose top-r singular values keep `energy` of Σσ²."""
    squared = singular_values.double() ** 2
    kept = torch.cumsum(squared, 0) / squared.sum().clamp_min(1e-300)
    return min(int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype))) + 1,
               singular_values.numel())


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W ≈ up @ down with up = U_r Σ_r^½ `[out, r]`, down = Σ_r^½ V_rᵀ `[r, in]`.

    Splitting Σ evenly keeps both factors on the same scale, which PELA found trains better
    than putting all of Σ on one side. Computed in float32 (float64 doubles the cost of the
    largest part of the step on CPU for no visible gain on float32 weights).
    """
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).to(weight.dtype)
    down = (root[:, None] * vh[:rank]).to(weight.dtype)
    return up.contiguous(), down.contiguous()


def allocate_uniform(shapes: dict[str, tuple[int, int]], keep: float) -> dict[str, int]:
    """Every layer keeps `keep` of its own parameters: r = floor(keep * in*out/(in+out))."""
    return {
        name: max(1, math.floor(keep * out * inp / (out + inp)))
        for name, (out, inp) in shapes.items()
    }


def allocate_energy(
    spectra: dict[str, torch.Tensor], shapes: dict[str, tuple[int, int]], keep: float
) -> dict[str, int]:
    """Global greedy allocation: spend the budget on the singular directions that retain the
    most normalized energy (σ²/Σσ² of their layer) per parameter (in+out) they cost.

    Each layer gets rank >= 1 and stays below break-even; layers the greedy would fill to
    break-even are better left dense, which the caller decides with `reduces_params`.
    """
    budget = keep * sum(out * inp for out, inp in shapes.values())
    ranks = dict.fromkeys(shapes, 1)
    spent = sum(out + inp for out, inp in shapes.values())
    candidates: list[tuple[float, str]] = []
    for name, sigma in spectra.items():
        out, inp = shapes[name]
        squared = sigma.double() ** 2
        share = squared / squared.sum().clamp_min(1e-300)
        limit = max(1, math.ceil(break_even_rank(out, inp)) - 1)
        cost = out + inp
        candidates += [(float(share[i]) / cost, name) for i in range(1, min(limit, len(sigma)))]
    candidates.sort(key=lambda item: item[0], reverse=True)
    for _score, name in candidates:
        out, inp = shapes[name]
        if spent + out + inp > budget:
            continue
        ranks[name] += 1
        spent += out + inp
    return ranks


def perturbation_loss(
    up: torch.Tensor, down: torch.Tensor, original: torch.Tensor
) -> torch.Tensor:
    """‖up@down − W‖²_F / ‖W‖²_F: PELA's weight-perturbation regularizer, made scale-free so
    that every layer weighs the same whatever its size or norm.

    Its own autograd function: plain autograd keeps each factorized layer's dense
    `up@down − W` for the backward pass, two dense copies of the targeted weights in all
    (0.4 GB of SmolLM2's 3.7 GB training peak); here backward forms one layer's difference at a
    time again, at the cost of one matmul. (Expanding the square into rank-sized terms saves
    the same memory but is not exact near a perfect fit: the terms cancel to ~1e-7 in fp32.)
    """
    return _RelativeResidual.apply(up, down, original)


class _RelativeResidual(torch.autograd.Function):
    """loss = ‖UD − W‖² / ‖W‖²; dU = 2 R Dᵀ / ‖W‖², dD = 2 Uᵀ R / ‖W‖² with R = UD − W."""

    @staticmethod
    def forward(ctx: Any, up: torch.Tensor, down: torch.Tensor, original: torch.Tensor
                ) -> torch.Tensor:
        energy = original.pow(2).sum().clamp_min(1e-12)
        ctx.save_for_backward(up, down, original, energy)
        return (up @ down - original).pow(2).sum() / energy

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        up, down, original, energy = ctx.saved_tensors
        scaled = (up @ down - original).mul_(2 * grad / energy)
        grad_up = scaled @ down.transpose(0, 1) if ctx.needs_input_grad[0] else None
        grad_down = up.transpose(0, 1) @ scaled if ctx.needs_input_grad[1] else None
        return grad_up, grad_down, None


def feature_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-token relative squared error ‖s − t‖² / ‖t‖², averaged over tokens.

    Relative per token because LLM residual streams carry a few huge "massive activations"
    (e.g. at the first token) that would otherwise swamp a plain MSE.
    """
    error = (student.float() - teacher.float()).pow(2).sum(-1)
    scale = teacher.float().pow(2).sum(-1).clamp_min(1e-6)
    return (error / scale).mean()
