"""Activations quantized at inference, simulated: a model is measured as it will run.

FP8 and INT8 W8A8 (and NVFP4's W4A4 form) quantize the *inputs* of each Linear at inference,
dynamically per token (a scale from each token's own values) or with a static per-tensor
scale from calibration. A perplexity measured with the weights quantized and the activations
left in float would flatter these schemes; so a step that quantizes activations attaches
`quantize_inputs` to its layers, and from then on every forward of the model (the pipeline's
evaluation, the search's verification, a later step) sees each such input quantized the same
way (the round trips in `ops`: `ops.float_quant`, `ops.int_activations`), until the model is
saved, where the checkpoint's `input_activations` say the same to vLLM.

How: each transformer block runs under a `TorchFunctionMode` (entered by a forward pre-hook,
left by an always-called forward hook, so a forward the engine runs block by block is covered
as much as one through the whole model), which fake-quantizes the input of every product with
a registered weight: a Linear's weight parameter, or one expert's slice of a fused experts
parameter (tagged when the experts module indexes it, as `engine.experts.ExpertInputs` does).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from compressors.engine.experts import eager_experts
from compressors.engine.layers import ExpertLayer
from compressors.engine.modules import find_blocks

InputsKind = Literal["int", "float"]
_PRODUCTS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}
_TAG = "_compressors_input_quant"


@dataclass(frozen=True)
class InputQuant:
    """How a layer's inputs are quantized at inference.

    `kind`/`bits`: int8, or float (8: FP8 E4M3; 4: FP4 E2M1); `strategy`: "token" (a scale per
    token, dynamic), "tensor" (one scale, static from calibration unless `dynamic`), "group"
    (a scale per `group_size` consecutive values of a token, dynamic: FP8's block scheme),
    "tensor_group" (NVFP4's A4 form: a dynamic scale per group, `dynamic="local"`, relative to
    a static global scale from calibration); `scale_dtype`: what the group scales are rounded
    to (NVFP4: FP8 E4M3).
    """

    kind: InputsKind
    bits: int
    strategy: Literal["token", "tensor", "group", "tensor_group"]
    dynamic: bool | Literal["local"] = True
    group_size: int | None = None
    scale_dtype: torch.dtype | None = None

    @property
    def static_name(self) -> str:
        """The checkpoint's name for the static part of the scheme: `input_scale`, or NVFP4's
        `input_global_scale`."""
        return "input_global_scale" if self.strategy == "tensor_group" else "input_scale"

    def args(self, scale_dtype: torch.dtype | None = None):
        """compressed-tensors' `QuantizationArgs` of these inputs (the checkpoint's
        `input_activations`)."""
        from compressed_tensors.quantization import QuantizationArgs

        return QuantizationArgs(num_bits=self.bits, type=self.kind, symmetric=True,
                                strategy=self.strategy, dynamic=self.dynamic,
                                group_size=self.group_size,
                                scale_dtype=scale_dtype or self.scale_dtype)


Quantizer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]  # (inputs, scale)


@dataclass
class _Registered:
    layer: nn.Module
    spec: InputQuant
    quantize: Quantizer
    static_scale: torch.Tensor | None

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.quantize(inputs, self.static_scale)


class _QuantizedInputs(TorchFunctionMode):
    """Fake-quantizes the input of every product with a registered weight: the weights are
    looked up when the block is entered (a streamed block's parameters are new each time)."""

    def __init__(self, entries: list[_Registered]) -> None:
        super().__init__()
        self.modules: dict[int, _Registered] = {}
        self.fused: dict[int, dict[int, _Registered]] = {}
        for entry in entries:
            layer = entry.layer
            if isinstance(layer, ExpertLayer):
                param = getattr(layer.owner, layer.param)
                self.fused.setdefault(id(param), {})[layer.expert] = entry
            else:
                self.modules[id(layer.weight)] = entry

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__getitem__ and id(args[0]) in self.fused:
            result = func(*args, **kwargs)
            expert = args[1]
            if isinstance(expert, torch.Tensor) and expert.numel() == 1:
                expert = int(expert)
            found = self.fused[id(args[0])].get(expert) if isinstance(expert, int) else None
            if found is not None and isinstance(result, torch.Tensor):
                result.__dict__[_TAG] = found
            return result
        if func in _PRODUCTS and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            found = getattr(args[1], _TAG, None) or self.modules.get(id(args[1]))
            if found is not None:
                args = (found(args[0]), *args[1:])
        return func(*args, **kwargs)


@dataclass
class _Registry:
    """The layers of one model whose inputs are quantized, by block."""

    by_block: dict[str, list[_Registered]]
    names: dict[str, _Registered]
    handles: list


_REGISTRIES: weakref.WeakKeyDictionary[nn.Module, _Registry] = weakref.WeakKeyDictionary()


def quantize_inputs(model: nn.Module, layers: dict[str, nn.Module], spec: InputQuant,
                    quantize: Quantizer, static_scales: dict[str, torch.Tensor] | None = None,
                    ) -> None:
    """From now on every forward of `model` quantizes the inputs of `layers` (inside the
    transformer blocks) with `quantize(inputs, scale)`: `scale` is the layer's entry of
    `static_scales` for a static scheme, None for a dynamic one; `spec` says which scheme it
    is, for the checkpoint. The expert matrices of one fused parameter share one product
    each expert (`x @ W[e]`): gate and up of an expert share the spec."""
    registry = _REGISTRIES.get(model)
    prefix, blocks = find_blocks(model)
    if registry is None:
        registry = _REGISTRIES[model] = _Registry({}, {}, [])
        _hook_blocks(registry, prefix, blocks)
    for name, layer in layers.items():
        entry = _Registered(layer, spec, quantize, (static_scales or {}).get(name))
        registry.names[name] = entry
        block = ".".join(name[len(prefix) + 1:].split(".")[:1])
        registry.by_block.setdefault(f"{prefix}.{block}", []).append(entry)


def input_quant(model: nn.Module, name: str) -> tuple[InputQuant, torch.Tensor | None] | None:
    """(spec, static scale) of a layer whose inputs are quantized, for the checkpoint."""
    registry = _REGISTRIES.get(model)
    entry = registry.names.get(name) if registry is not None else None
    return None if entry is None else (entry.spec, entry.static_scale)


def _hook_blocks(registry: _Registry, prefix: str, blocks: nn.ModuleList) -> None:
    """Every block runs under the mode (entered and left around its own forward)."""
    for index, block in enumerate(blocks):
        name = f"{prefix}.{index}"
        stacks: list[contextlib.ExitStack] = []

        def enter(_module: nn.Module, _args: tuple, name: str = name,
                  stacks: list = stacks) -> None:
            entries = registry.by_block.get(name)
            if entries:
                stack = contextlib.ExitStack()
                experts = [e.layer for e in entries if isinstance(e.layer, ExpertLayer)]
                stack.enter_context(eager_experts(experts))  # experts index W[e]: seen
                stack.enter_context(_QuantizedInputs(entries))
                stacks.append(stack)

        def leave(_module: nn.Module, _args: tuple, _out: object,
                  stacks: list = stacks) -> None:
            if stacks:
                stacks.pop().close()

        registry.handles.append(block.register_forward_pre_hook(enter))
        registry.handles.append(block.register_forward_hook(leave, always_call=True))


def remove_input_quantization(model: nn.Module) -> None:
    """Forget every registration (a model rebuilt for saving or training)."""
    registry = _REGISTRIES.pop(model, None)
    for handle in registry.handles if registry is not None else []:
        handle.remove()
