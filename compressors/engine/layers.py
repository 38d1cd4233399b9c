"""Layer kinds: the families of weight-holding layers a model may contain, and how to read them.

The engine knows one kind itself, `dense` (`nn.Linear`, GPT-2's `Conv1D`). Methods bring the
others (bitsandbytes layers, factorized layers, ...) and declare them in the registry
(`Method.layer_kinds`), so core code never imports a method's library: a question like "what
dense weight does this layer stand for?" or "how many bytes does it hold?" goes through the
kind that matches the layer.
"""

from __future__ import annotations

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


@lru_cache(maxsize=1)
def layer_kinds() -> tuple[LayerKind, ...]:
    """Every registered kind, the methods' first (they may subclass nn.Linear)."""
    found = [import_object(ref) for m in METHODS.values() for ref in m.layer_kinds]
    return (*found, DENSE)


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of a weight-holding layer, or None for any other module."""
    if isinstance(module, LINEAR_TYPES) and type(module).__module__.startswith("torch"):
        return DENSE  # the common case, without walking the registry
    return next((kind for kind in layer_kinds() if kind.matches(module)), None)


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight-holding layer of any kind (dense, quantized, factorized, ...), by name."""
    return {name: m for name, m in model.named_modules() if kind_of(m) is not None}


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
