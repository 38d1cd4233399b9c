"""The factorized layer, and swapping it in and out of a model.

`LowRankLinear` computes `x @ downᵀ @ upᵀ + bias`, the same map as the Linear (or GPT-2
Conv1D) it replaces, so the surrounding architecture code runs unchanged. It remembers which
kind of layer it came from, so `merge_to_dense` can put back exactly that kind.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from compressors.engine.layers import LayerKind
from compressors.engine.modules import set_module, weight_matrix
from compressors.methods.lowrank.factorize import svd_factors

SOURCES = ("linear", "conv1d")


class LowRankLinear(nn.Module):
    """y = up @ (down @ x) + bias, with `down` `[rank, in]` and `up` `[out, rank]`."""

    def __init__(
        self, in_features: int, out_features: int, rank: int, bias: bool = True,
        source: str = "linear", dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source: must be one of {SOURCES}, got {source!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.source = source
        kwargs = {"dtype": dtype, "device": device}
        self.down = nn.Parameter(torch.zeros(rank, in_features, **kwargs))
        self.up = nn.Parameter(torch.zeros(out_features, rank, **kwargs))
        self.bias = nn.Parameter(torch.zeros(out_features, **kwargs)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up, self.bias)

    def merged_weight(self) -> torch.Tensor:
        """The dense `[out, in]` matrix this layer stands for."""
        return self.up @ self.down

    @torch.no_grad()
    def balance_(self) -> None:
        """Give each rank component equal norm in `up` and `down`, the map unchanged.

        Whitened factors put `S⁻¹` into `down` (and a refit changes `up` alone), so one factor
        of a component can be orders of magnitude larger than the other. Adam moves every
        coordinate by about the learning rate whatever its scale, so on such factors a
        learning rate that suits one side wrecks the other; balanced, both sides move alike.
        """
        up_norm = self.up.float().norm(dim=0)
        down_norm = self.down.float().norm(dim=1)
        scale = (down_norm / up_norm.clamp_min(1e-30)).sqrt()
        scale = torch.where((up_norm > 0) & (down_norm > 0), scale, torch.ones_like(scale))
        self.up.mul_(scale.to(self.up.dtype))
        self.down.div_(scale.to(self.down.dtype)[:, None])

    def spec(self) -> dict[str, object]:
        """What the checkpoint config records to rebuild this layer."""
        return {"rank": self.rank, "in_features": self.in_features,
                "out_features": self.out_features, "bias": self.bias is not None,
                "source": self.source}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}, source={self.source}")

    @classmethod
    def from_layer(cls, layer: nn.Module, rank: int) -> LowRankLinear:
        """Plain truncated-SVD initialisation from a Linear or Conv1D."""
        up, down = svd_factors(weight_matrix(layer), rank)
        return cls.from_factors(layer, up, down)

    @classmethod
    def from_factors(cls, layer: nn.Module, up: torch.Tensor, down: torch.Tensor
                     ) -> LowRankLinear:
        """The layer standing in for `layer` (Linear or Conv1D) with the given factors, in
        `layer`'s dtype and device, keeping its bias."""
        weight = weight_matrix(layer)
        out_features, in_features = weight.shape
        source = "conv1d" if isinstance(layer, Conv1D) else "linear"
        bias = getattr(layer, "bias", None)
        new = cls(in_features, out_features, up.shape[1], bias is not None, source,
                  dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            new.up.copy_(up)
            new.down.copy_(down)
            if bias is not None:
                new.bias.copy_(bias.detach())
        return new

    def to_dense(self) -> nn.Module:
        """The equivalent Linear / Conv1D with the merged weight."""
        with torch.no_grad():
            weight = self.merged_weight()
            if self.source == "conv1d":
                dense = Conv1D(self.out_features, self.in_features)
                dense.to(device=weight.device, dtype=weight.dtype)
                dense.weight.copy_(weight.t())
            else:
                dense = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                                  device=weight.device, dtype=weight.dtype)
                dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense


def lowrank_layers(model: nn.Module) -> dict[str, LowRankLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLinear)}


def factorize(model: nn.Module, layers: dict[str, nn.Module], ranks: dict[str, int]) -> None:
    """Replace each named layer by its rank-`ranks[name]` SVD factorization, in place."""
    for name, rank in ranks.items():
        set_module(model, name, LowRankLinear.from_layer(layers[name], rank))


def install_empty(model: nn.Module, specs: dict[str, dict]) -> None:
    """Put uninitialised LowRankLinear layers where a checkpoint says they are (for loading)."""
    reference = next(model.parameters())
    for name, spec in specs.items():
        set_module(model, name, LowRankLinear(
            int(spec["in_features"]), int(spec["out_features"]), int(spec["rank"]),
            bool(spec["bias"]), str(spec["source"]), dtype=reference.dtype,
            device=reference.device,
        ))


def merge_to_dense(model: nn.Module) -> int:
    """Replace every LowRankLinear by its merged dense layer; returns how many were merged."""
    found = lowrank_layers(model)
    for name, layer in found.items():
        set_module(model, name, layer.to_dense())
    return len(found)


LAYER_KIND = LayerKind("factorized", lambda m: isinstance(m, LowRankLinear),
                       lambda layer: layer.merged_weight().detach())
