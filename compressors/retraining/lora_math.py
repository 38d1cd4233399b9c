"""Pure tensor math of the PERP adapters: initialisation, adapted weight, exact merge.

No modules and no model walking here. Weights are `[out, in]`; `A` is `[rank, in]`, `B` is
`[out, rank]`; `mask` is a bool keep-mask `[out, in]` (True = weight may be nonzero).

- masklora:  W + s * (B @ A) ⊙ mask   -> pruned entries get no update, in training and merge
- scalelora: W ⊙ (B @ A)              -> zeros stay zero by construction; B @ A starts at ones
- lora:      W + s * (B @ A)          -> dense update during training, re-masked at merge
"""

from __future__ import annotations

import math

import torch

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
