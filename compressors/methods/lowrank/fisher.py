"""The output side of a Kronecker-factored loss curvature: `F = Σ g gᵀ` per layer, where `g` is
the gradient of the next-token loss with respect to the layer's output at one token.

Why: the whitened SVD minimises each layer's output error `‖(W − W')X‖`, which treats an
error in every output direction, of every layer, as equally harmful. To second order the loss
rises by about `½ tr(ΔW G ΔWᵀ F)` (K-FAC's approximation of the Fisher: input Gram `G` times
output-gradient Gram `F`), so weighting the SVD by `F` as well (`ops.whitening.whitened_svd`'s
`output`) keeps the directions the *loss* needs, and every discarded σᵢ² is in the same units
(loss) in every layer, which is what the global rank allocation compares. GFWSVD (Chekalina
et al. 2025) and the LLM Surgeon (van der Ouderaa et al. 2023) use such Kronecker factors.

One forward and backward pass of the whole, unchanged model per calibration window, without
parameter gradients (the embedding output is made to require grad so the graph reaches every
layer). Sums are float32 (a window's contribution is small next to the total; float64 would
double ~0.7 GB on SmolLM2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ProgressFn = Callable[[float, str], None]


def output_fisher(
    model: nn.Module, windows: torch.Tensor, layers: dict[str, nn.Module],
    device: torch.device | None = None, progress: ProgressFn | None = None,
) -> dict[str, torch.Tensor]:
    """`Σ g gᵀ [out, out]` per layer over every token of `windows` (mean loss per window)."""
    sums: dict[str, torch.Tensor] = {}
    handles = [model.get_input_embeddings().register_forward_hook(_require_grad)]
    handles += [layer.register_forward_hook(_gradient_hook(sums, name))
                for name, layer in layers.items()]
    before = {id(p): p.requires_grad for p in model.parameters()}
    for param in model.parameters():
        param.requires_grad_(False)
    was_training = model.training
    model.eval()  # dropout would make the gradients noise, not the model's curvature
    target = device or next(model.parameters()).device
    try:
        for index, window in enumerate(windows):
            ids = window[None].to(target)
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            F.cross_entropy(logits, ids[0, 1:]).backward()
            if progress is not None:
                progress((index + 1) / len(windows), f"loss gradients {index + 1}/{len(windows)}")
    finally:
        for handle in handles:
            handle.remove()
        for param in model.parameters():
            param.requires_grad_(before[id(param)])
        model.train(was_training)
    return sums


def _require_grad(_module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output.detach().requires_grad_()


def _gradient_hook(sums: dict[str, torch.Tensor], name: str):
    def forward_hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda grad: _accumulate(sums, name, grad))

    return forward_hook


def _accumulate(sums: dict[str, torch.Tensor], name: str, grad: torch.Tensor) -> None:
    flat = grad.detach().reshape(-1, grad.shape[-1]).float()
    product = flat.T @ flat
    if name in sums:
        sums[name] += product
    else:
        sums[name] = product
