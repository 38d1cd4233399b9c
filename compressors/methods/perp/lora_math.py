"""Pure tensor math of the PERP adapters: initialisation, adapted weight, exact merge.

No modules and no model walking here. Weights are `[out, in]`; `A` is `[rank, in]`, `B` is
`[out, rank]`; `mask` is a bool keep-mask `[out, in]` (True = weight may be nonzero).

- masklora:  W + s * (B @ A) ⊙ mask   -> pruned entries get no update, in training and merge
- scalelora: W ⊙ (B @ A)              -> zeros stay zero by construction; B @ A starts at ones
- lora:      W + s * (B @ A)          -> dense update during training, re-masked at merge
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

ADDITIVE = ("masklora", "lora")
ADAPTER_MODES = ("masklora", "scalelora", "lora")


def init_factors(
    out_features: int, in_features: int, rank: int, mode: str,
    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) so the adapted weight starts equal to W.

    Additive modes: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (B @ A = 0), as in LoRA.
    scalelora: B @ A must start at all ones. A rank-1 ones pair would give every rank the same
    gradient forever, so only rank 0 carries the ones (A[0] = 1, B[:, 0] = 1) and the other
    ranks start like LoRA (random A, zero B): the product is exactly 1 and the ranks can diverge.
    """
    if mode not in ADAPTER_MODES:
        raise ValueError(f"mode must be one of {ADAPTER_MODES}, got {mode!r}")
    bound = 1.0 / math.sqrt(in_features)
    a = (torch.rand(rank, in_features, generator=generator, dtype=torch.float32) * 2 - 1) * bound
    b = torch.zeros(out_features, rank, dtype=torch.float32)
    if mode == "scalelora":
        a[0] = 1.0
        b[:, 0] = 1.0
    return a.to(dtype), b.to(dtype)


def adapted_weight(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mode: str, scale: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The weight the adapted layer computes with (differentiable in A and B)."""
    product = b @ a
    if mode == "scalelora":
        return weight * product
    if mode == "masklora":
        if mask is None:
            raise ValueError("masklora needs a mask")
        return weight + scale * product * mask.to(product.dtype)
    if mode == "lora":
        return weight + scale * product
    raise ValueError(f"mode must be one of {ADAPTER_MODES}, got {mode!r}")


def adapted_linear(
    inputs: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mode: str,
    scale: float, mask: torch.Tensor | None,
) -> torch.Tensor:
    """`inputs @ adapted_weight(...)ᵀ` (no bias), differentiable in inputs, A, B and W."""
    return _AdaptedLinear.apply(inputs, weight, a, b, mode, scale, mask)


class _AdaptedLinear(torch.autograd.Function):
    """The adapted layer's matmul without keeping `[out, in]` tensors for the backward pass.

    Plain autograd through `adapted_weight` saves, per layer, the adapted weight and the float
    mask (two `[out, in]` tensors: ~0.85 GB on SmolLM2-135M) until backward. Here backward
    recomputes the adapted weight from W, A, B and the bool mask, and forms dL/dW' = gᵀx once,
    transiently; what is saved is what a plain Linear saves (the input) plus the factors.
    With dL/d(BA) = s·dL/dW'⊙mask (masklora), s·dL/dW' (lora), dL/dW'⊙W (scalelora):
    dL/dB = dL/d(BA)·Aᵀ and dL/dA = Bᵀ·dL/d(BA).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: Any, inputs: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
        mode: str, scale: float, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.save_for_backward(inputs, weight, a, b, mask)
        ctx.mode, ctx.scale = mode, scale
        effective = adapted_weight(weight, a, b, mode, scale, mask)  # forward runs without grad
        return F.linear(inputs, effective.to(inputs.dtype))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs, weight, a, b, mask = ctx.saved_tensors
        grad_inputs = grad_weight = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            effective = adapted_weight(weight, a, b, ctx.mode, ctx.scale, mask)
            grad_inputs = grad_output @ effective.to(grad_output.dtype)
        if any(ctx.needs_input_grad[1:4]):
            flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
            flat_inputs = inputs.reshape(-1, inputs.shape[-1]).to(flat_grad.dtype)
            grad_effective = (flat_grad.t() @ flat_inputs).to(a.dtype)
            if ctx.mode == "scalelora":
                grad_product = grad_effective * weight
                if ctx.needs_input_grad[1]:
                    grad_weight = (grad_effective * (b @ a)).to(weight.dtype)
            else:
                grad_product = ctx.scale * grad_effective
                if ctx.mode == "masklora":
                    grad_product = grad_product * mask.to(grad_product.dtype)
                if ctx.needs_input_grad[1]:
                    grad_weight = grad_effective.to(weight.dtype)
            grad_b = grad_product @ a.t()
            grad_a = b.t() @ grad_product
        return grad_inputs, grad_weight, grad_a, grad_b, None, None, None


@torch.no_grad()
def merged_weight(
    weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mode: str, scale: float,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """The plain weight to store after training, computed in fp32, with the mask made exact.

    Pruned entries are set to exactly 0 (also for `lora`, whose update was dense). A kept entry
    that the update happened to land on exactly 0.0 would silently enlarge the pruned set, so it
    is nudged to the smallest normal float of its sign-less magnitude (~1e-38): the value change
    is nil for the model, and the nonzero pattern stays exactly the mask.
    """
    merged = adapted_weight(weight.float(), a.float(), b.float(), mode, scale, mask)
    if mask is not None:
        keep = mask.to(device=merged.device, dtype=torch.bool)
        merged = torch.where(keep, merged, torch.zeros((), dtype=merged.dtype))
        tiny = torch.finfo(weight.dtype).tiny
        merged = torch.where(keep & (merged == 0), torch.full((), tiny), merged)
    return merged.to(weight.dtype)


def sparsity_preserved(weight: torch.Tensor, mask: torch.Tensor) -> bool:
    """True when the nonzero pattern of `weight` is exactly `mask`."""
    return bool(torch.equal(weight != 0, mask.to(device=weight.device, dtype=torch.bool)))
