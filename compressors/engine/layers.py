"""Layer kinds: the families of weight-holding layers a model may contain, and how to read them.

The engine knows one kind itself, `dense` (`nn.Linear`, GPT-2's `Conv1D`). Methods bring the
others (bitsandbytes layers, factorized layers, ...) and declare them in the registry
(`Method.layer_kinds`), so core code never imports a method's library: a question like "what
dense weight does this layer stand for?" or "how many bytes does it hold?" goes through the
kind that matches the layer.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from compressors.methods import METHODS, import_object

LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


@dataclass(frozen=True)
class LayerKind:
    """How to read one family of layers.

    `packed`: the layer's weight tensor holds codes, not values, so parameters and zeros are
    counted from `dense_weight` and its bytes from `weight_bytes` (quantized layers).
    `tensors`: extra tensors the layer holds besides its parameters and buffers (scales, code
    books), counted in the memory footprint.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    dense_weight: Callable[[nn.Module], torch.Tensor]
    packed: bool = False
    tensors: Callable[[nn.Module], list[torch.Tensor]] = lambda _layer: []


def _dense_weight(layer: nn.Module) -> torch.Tensor:
    return layer.weight.data.t() if isinstance(layer, Conv1D) else layer.weight.data


DENSE = LayerKind("dense", lambda m: isinstance(m, LINEAR_TYPES), _dense_weight)


class ExpertLayer(nn.Module):
    """One expert's matrix of a mixture-of-experts block, as a layer every method works on.

    The experts of a transformers 5 MoE block are fused 3-D parameters of one module, not
    Linear layers (`engine.experts` finds them). This stands for one expert's `[out, in]`
    matrix (or the rows of it that the checkpoint saves as one matrix, e.g. `gate_proj` of
    `gate_up_proj`): `weight` is a view of the owner's parameter as it is *now* (a streamed
    block's parameters are replaced on every load), so in-place edits (masks, reconstructed
    or quantized weights) land in the model. It is not part of the model's module tree and
    has no forward: the experts module computes with the fused parameter.
    """

    def __init__(self, owner: nn.Module, fused: str, expert: int, rows: slice | None,
                 transposed: bool, name: str, per_expert_checkpoint: bool) -> None:
        super().__init__()
        self._owner = weakref.ref(owner)
        self.fused = fused  # the parameter's full name: "model.layers.1.mlp.experts.down_proj"
        self.param = fused.rpartition(".")[2]
        self.expert, self.rows = expert, rows
        self.transposed, self.name = transposed, name
        self.per_expert_checkpoint = per_expert_checkpoint

    @property
    def owner(self) -> nn.Module:
        owner = self._owner()
        if owner is None:
            raise RuntimeError(f"{self.name}: its experts module no longer exists")
        return owner

    @property
    def weight(self) -> torch.Tensor:
        matrix = getattr(self.owner, self.param).data[self.expert]
        if self.transposed:
            matrix = matrix.t()
        return matrix if self.rows is None else matrix[self.rows]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def extra_repr(self) -> str:
        return f"{self.name}: {tuple(self.weight.shape)}"


EXPERT = LayerKind("expert", lambda m: isinstance(m, ExpertLayer), lambda layer: layer.weight)
EDITABLE = (DENSE, EXPERT)  # kinds whose weight is a plain float matrix edited in place


@lru_cache(maxsize=1)
def layer_kinds() -> tuple[LayerKind, ...]:
    """Every registered kind, the methods' first (they may subclass nn.Linear)."""
    found = [import_object(ref) for m in METHODS.values() for ref in m.layer_kinds]
    return (*found, EXPERT, DENSE)


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of a weight-holding layer, or None for any other module."""
    if isinstance(module, LINEAR_TYPES) and type(module).__module__.startswith("torch"):
        return DENSE  # the common case, without walking the registry
    return next((kind for kind in layer_kinds() if kind.matches(module)), None)


def is_packed(module: nn.Module) -> bool:
    kind = kind_of(module)
    return kind is not None and kind.packed


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The `[out, in]` weight a layer stands for, for reading (dequantized, or up @ down)."""
    kind = kind_of(layer)
    if kind is None:
        raise TypeError(f"{type(layer).__name__} is not a weight-holding layer kind")
    return kind.dense_weight(layer)


def layer_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """Tensors a layer holds besides its parameters and buffers (scales, code books)."""
    kind = kind_of(layer)
    return [t for t in (kind.tensors(layer) if kind else []) if t is not None]


def memory_footprint(model: nn.Module) -> int:
    """Bytes the model holds: parameters, buffers and the layers' extra tensors (scales, code
    books); shared tensors once."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tensors += layer_tensors(module)
    unique = {id(t): t for t in tensors}
    return sum(t.numel() * t.element_size() for t in unique.values())
