"""bitsandbytes layers as the rest of the library needs them: dense views, bytes, corrections.

bitsandbytes stores 4-bit weights packed two to a byte (and, on CPUs with AVX512-BF16, repacks
them into a kernel-specific layout on the first forward pass), and int8 weights as rows with
one scale each. Counting zeros, parameters or bytes on those raw tensors would be wrong, so
every such question goes through the functions here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from compressors.engine.layers import LayerKind


def is_bnb_layer(module: nn.Module) -> bool:
    """A bitsandbytes layer (Linear4bit, Linear8bitLt), told without importing bitsandbytes."""
    return type(module).__module__.startswith("bitsandbytes") and hasattr(module, "weight")


def is_4bit(layer: nn.Module) -> bool:
    return getattr(layer.weight, "quant_state", None) is not None


def bnb_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if is_bnb_layer(module):
            yield name, module


def _int8_scales(layer: nn.Module) -> torch.Tensor:
    """Per-row absmax: on the weight right after quantizing, on the layer state afterwards."""
    scales = getattr(layer.weight, "SCB", None)
    if scales is None:
        scales = getattr(getattr(layer, "state", None), "SCB", None)
    if scales is None:
        raise ValueError(f"{type(layer).__name__}: int8 weight has no row scales (SCB)")
    return scales


def _unpacked_4bit(layer: nn.Module) -> tuple[torch.Tensor, object]:
    """The canonical (weight, quant_state) of a 4-bit layer, undoing the CPU kernel layout.

    bitsandbytes' own inverse leaves non-nested scales transposed in bfloat16; fixed here on a
    copy, so the layer itself is left exactly as it was.
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    state = layer.weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        return layer.weight.data, state
    weight, state = _convert_weight_packed_for_cpu_inverse(
        layer.weight.data.clone(), copy.deepcopy(state)
    )
    if not state.nested:
        state.absmax = state.absmax.T.reshape(-1).float()
    return weight, state


@torch.no_grad()
def dequantize(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a dense float32 `[out, in]` copy (what the matmul really uses)."""
    if is_4bit(layer):
        from bitsandbytes.functional import dequantize_4bit

        weight, state = _unpacked_4bit(layer)
        return dequantize_4bit(weight, state).float().reshape(state.shape)
    rows = layer.weight.data
    if rows.dtype != torch.int8:  # has_fp16_weights: still a plain matrix
        return rows.float()
    return rows.float() * (_int8_scales(layer).float()[:, None] / 127.0)


def logical_shape(layer: nn.Module) -> torch.Size:
    """`[out, in]` of the weight before packing."""
    if is_4bit(layer):
        return torch.Size(layer.weight.quant_state.shape)
    return layer.weight.shape


def _quant_state_tensors(layer: nn.Module) -> list[torch.Tensor]:
    """Scales and code books a quantized layer holds besides its packed weight."""
    if not is_4bit(layer):
        return [_int8_scales(layer)] if layer.weight.dtype == torch.int8 else []
    state = layer.weight.quant_state
    tensors = [state.absmax, getattr(state, "code", None)]
    nested = getattr(state, "state2", None) if state.nested else None
    if nested is not None:
        tensors += [nested.absmax, nested.code, getattr(state, "offset", None)]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


class LowRankCorrection(nn.Module):
    """LoRC factors of one layer; `up @ (down @ x)` is added to the quantized layer's output.

    Buffers are non-persistent: `save_pretrained` writes a standard bitsandbytes checkpoint
    that any transformers install reloads, and the factors travel in their own file.
    """

    def __init__(self, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("up", up, persistent=False)
        self.register_buffer("down", down, persistent=False)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return (x.to(dtype) @ self.down.to(dtype).t()) @ self.up.to(dtype).t()


def _add_correction(layer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + layer.lorc(args[0]).to(output.dtype)


def attach_correction(layer: nn.Module, up: torch.Tensor, down: torch.Tensor) -> None:
    """Give `layer` a `lorc` child and a forward hook that adds its output."""
    if hasattr(layer, "lorc"):
        raise ValueError("layer already has a low-rank correction")
    weight_device = layer.weight.device
    layer.add_module("lorc", LowRankCorrection(up.to(weight_device), down.to(weight_device)))
    layer.register_forward_hook(_add_correction)


def corrections(model: nn.Module) -> dict[str, LowRankCorrection]:
    return {name: layer.lorc for name, layer in bnb_layers(model) if hasattr(layer, "lorc")}


def remember_canonical(model: nn.Module) -> None:
    """Keep each 4-bit layer's freshly quantized (weight, state) for saving later.

    On AVX512-BF16 CPUs the first forward repacks 4-bit weights for the CPU kernel, and
    bitsandbytes' way back is lossy for double-quantized scales. Saving the state as it was
    right after quantizing is what a fresh `from_pretrained` starts from, so a reloaded
    checkpoint repacks to exactly what this process computed with.
    """
    for _name, layer in bnb_layers(model):
        if is_4bit(layer) and layer.weight.device.type == "cpu":  # only CPUs repack
            state = layer.weight.quant_state
            if getattr(state, "packing_format_for_cpu", False):
                raise ValueError("remember_canonical must run before the first forward pass")
            layer._canonical_4bit = (layer.weight.data.clone(), copy.deepcopy(state))


def _set_4bit(layer: nn.Module, weight: torch.Tensor, state) -> None:
    layer.weight.data = weight
    layer.weight.quant_state = state
    if hasattr(layer, "quant_state"):
        layer.quant_state = state


@contextmanager
def canonical_4bit_weights(model: nn.Module) -> Iterator[None]:
    """Within the block, every 4-bit layer holds its canonical (saveable) layout."""
    layers = [layer for _name, layer in bnb_layers(model) if is_4bit(layer)]
    current = [(layer.weight.data, layer.weight.quant_state) for layer in layers]
    try:
        for layer in layers:
            canonical = getattr(layer, "_canonical_4bit", None) or _unpacked_4bit(layer)
            _set_4bit(layer, canonical[0], copy.deepcopy(canonical[1]))
        yield
    finally:
        for layer, (weight, state) in zip(layers, current, strict=True):
            _set_4bit(layer, weight, state)


LAYER_KIND = LayerKind("bitsandbytes", is_bnb_layer, dequantize, packed=True,
                       tensors=_quant_state_tensors)
