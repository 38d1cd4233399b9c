"""PERP's adapters on mixture-of-experts expert matrices: a parametrization of the fused
parameter, so each expert's pruned matrix gets its own mask-keeping LoRA.

An expert matrix is a slice of a fused 3-D parameter that the experts module multiplies by
inside its own forward (`engine.experts`); there is no Linear module to wrap. Instead the
fused parameter gets a `torch.nn.utils.parametrize` parametrization: the module reads
`base + Σ_slices update(slice)`, where each pruned expert slice contributes
`lora_math.adapted_weight(slice) − slice` (masklora/lora: `s·(B A)⊙mask`; scalelora:
`slice ⊙ (B A) − slice`), so gradients reach every expert's A and B through whatever the
experts forward does with the parameter (eager loop or grouped matmuls), and the base stays
frozen. Training runs under `parametrize.cached()`, so the adapted parameter is formed once
per forward however many times the experts module indexes it. Merging removes the
parametrization, keeping its value, then writes each slice's exact `lora_math.merged_weight`
(pruned entries exactly zero, kept ones never exactly zero).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from compressors.engine.layers import ExpertLayer
from compressors.methods.perp import lora_math


class ExpertAdapters(nn.Module):
    """The adapters of the expert slices of one fused parameter (a parametrization)."""

    def __init__(self, layers: list[ExpertLayer], masks: dict[str, torch.Tensor | None],
                 mode: str, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.layers = layers  # not submodules: views into the owner's parameter
        self.mode, self.scale = mode, alpha / rank
        self.lora_a = nn.ParameterList()
        self.lora_b = nn.ParameterList()
        self.masks: list[torch.Tensor | None] = []
        for layer in layers:
            weight = layer.weight
            a, b = lora_math.init_factors(weight.shape[0], weight.shape[1], rank, mode,
                                          generator)
            self.lora_a.append(nn.Parameter(a.to(weight.device)))
            self.lora_b.append(nn.Parameter(b.to(weight.device)))
            mask = masks.get(layer.name)
            self.masks.append(None if mask is None else mask.to(weight.device, torch.bool))

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        """The fused parameter as the adapted experts compute with it: each expert's matrix
        rebuilt with its adapted slices, stacked once."""
        experts = list(base.unbind(0))
        for layer, a, b, mask in zip(self.layers, self.lora_a, self.lora_b, self.masks,
                                     strict=True):
            matrix = experts[layer.expert].t() if layer.transposed else experts[layer.expert]
            rows = layer.rows or slice(0, matrix.shape[0])
            adapted = lora_math.adapted_weight(matrix[rows], a, b, self.mode, self.scale, mask)
            rebuilt = torch.cat([matrix[:rows.start], adapted, matrix[rows.stop:]])
            experts[layer.expert] = rebuilt.t() if layer.transposed else rebuilt
        return torch.stack(experts)

    @torch.no_grad()
    def merged(self, base: torch.Tensor) -> torch.Tensor:
        """The plain fused parameter to store: every slice merged exactly."""
        out = base.clone()
        for layer, a, b, mask in zip(self.layers, self.lora_a, self.lora_b, self.masks,
                                     strict=True):
            piece = _slice(base, layer)
            _slice(out, layer).copy_(lora_math.merged_weight(piece, a, b, self.mode,
                                                             self.scale, mask))
        return out


def _slice(fused: torch.Tensor, layer: ExpertLayer) -> torch.Tensor:
    """`layer`'s `[out, in]` view of a fused `[E, ., .]` tensor."""
    matrix = fused[layer.expert]
    if layer.transposed:
        matrix = matrix.t()
    return matrix if layer.rows is None else matrix[layer.rows]


def wrap_experts(layers: dict[str, ExpertLayer], masks: dict[str, torch.Tensor | None],
                 mode: str, rank: int, alpha: float, generator: torch.Generator,
                 ) -> list[ExpertAdapters]:
    """Parametrize every fused parameter holding one of `layers`; returns the adapters."""
    by_param: dict[tuple[int, str], list[ExpertLayer]] = {}
    for layer in layers.values():
        by_param.setdefault((id(layer.owner), layer.param), []).append(layer)
    adapters = []
    for group in by_param.values():
        owner, param = group[0].owner, group[0].param
        adapter = ExpertAdapters(group, masks, mode, rank, alpha, generator)
        parametrize.register_parametrization(owner, param, adapter, unsafe=True)
        adapters.append(adapter)
    return adapters


def merge_experts(adapters: list[ExpertAdapters]) -> None:
    """Remove every parametrization, storing each fused parameter merged exactly."""
    for adapter in adapters:
        layer = adapter.layers[0]
        owner, param = layer.owner, layer.param
        base = owner.parametrizations[param].original.detach()
        merged = adapter.merged(base)
        parametrize.remove_parametrizations(owner, param, leave_parametrized=False)
        getattr(owner, param).data.copy_(merged)
