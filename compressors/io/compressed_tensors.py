"""The compressed-tensors checkpoint of integer-quantized models (pack-quantized, W4A16 / W8A16).

After a `gptq` or `rtn` step every quantized Linear holds its dequantized weight (what the
model computes with, so evaluation needs no special kernels) plus a `LayerQuant` (scales, zero
points, grid) under `QUANT_ATTR`. Saving turns each such weight back into its integer codes
(checked to dequantize to the very same values), packs them into int32 with compressed-tensors'
own packer, and writes `weight_packed` / `weight_scale` / `weight_shape` (and, asymmetric,
`weight_zero_point`) in place of `weight`, with the `quantization_config` that transformers,
vLLM and llm-compressor read (`quant_method: compressed-tensors`, `format: pack-quantized`).

The in-memory weights are computed by compressed-tensors' own `dequantize`, the function its
loaders call, so `AutoModelForCausalLM.from_pretrained(out)` (which decompresses on CPU) and
`compressors.load(out)` give back exactly the model that was evaluated. A format several
methods write (`gptq`, `rtn`): each declares it in its `METHOD.formats`.
"""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from compressors.engine.activations import input_quant
from compressors.engine.experts import expert_layers, router_names
from compressors.engine.layers import ExpertLayer
from compressors.io.formats import MAX_SHARD, CheckpointFormat
from compressors.io.loading import load_pretrained
from compressors.io.model_files import CONFIG_FILE, model_file, model_json, optional_file
from compressors.io.nvfp4_experts import experts_note, redo_nvfp4_experts
from compressors.io.scheme_notes import serving_notes
from compressors.ops.int_grid import Grid, QuantizedWeight, codes_of
from compressors.report.schema import CheckpointInfo

QUANT_ATTR = "compressors_quant"
FORMAT_NAME = "compressed-tensors"
QUANT_FORMAT = "pack-quantized"
HOW_TO_LOAD = (
    "Loads with `AutoModelForCausalLM.from_pretrained(path)` (needs the `compressed-tensors` "
    "package; the quantized weights are decompressed on load, also on CPU) or "
    "`compressors.load(path)`.")
DEQUANTIZED_NOTE = (
    " Stock transformers cannot hold its layers packed ({why}), so the checkpoint asks it to "
    "decompress them while loading (`dequantize: true`, which vLLM ignores: it serves the "
    "packed tensors).")
ZERO_POINT_BLOCKER = (
    "asymmetric zero points: transformers 5.25 with compressed-tensors 0.20.1 gives a packed "
    "layer an unpacked [out, groups] zero point, while the files hold it packed "
    "[out/8, groups] as vLLM and compressed-tensors' own decompression read it")
HOW_TO_SERVE = (
    "vLLM serves it with its compressed-tensors kernels ({labels}, {formats}): "
    "`vllm serve {{path}}` (or `from vllm import LLM; LLM(model=path)`).")


class CheckpointQuant(Protocol):
    """What a quantized layer carries under `QUANT_ATTR` for the checkpoint, whatever its
    scheme (integer grids here; FP8, NVFP4, ... in the methods that make them): its
    compressed-tensors format, the arguments of its weights, and its stored tensors, made
    from the weight the model computes with (and checked to give it back exactly)."""

    format: str

    def weight_args(self) -> Any: ...  # compressed-tensors QuantizationArgs

    def serialize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def bits_label(self) -> str: ...  # "W4A16", "W8A8", "FP8", ... for the serving line


@dataclass
class LayerQuant:
    """An integer grid's record (GPTQ, RTN): scales, zero points, the grid."""

    scale: torch.Tensor  # [out, groups], in the storage dtype, on CPU
    zero: torch.Tensor  # int8 [out, groups], all 0 when symmetric
    grid: Grid
    format: str = QUANT_FORMAT

    def weight_args(self) -> Any:
        return ct_args(self.grid)

    def serialize(self, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """`weight_packed` (codes packed in int32), `weight_scale`, `weight_shape`, and for an
        asymmetric grid `weight_zero_point`."""
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

        codes = weight_codes(weight, self)
        tensors = {
            "weight_packed": pack_to_int32(codes, self.grid.bits),
            "weight_scale": self.scale.contiguous(),
            "weight_shape": torch.tensor(list(codes.shape)),
        }
        if not self.grid.symmetric:
            tensors["weight_zero_point"] = pack_to_int32(self.zero.contiguous(), self.grid.bits,
                                                         packed_dim=0).contiguous()
        return tensors

    def bits_label(self) -> str:
        return f"W{self.grid.bits}A16"


def ct_args(grid: Grid):
    """The compressed-tensors `QuantizationArgs` of a grid."""
    from compressed_tensors.quantization import QuantizationArgs

    if grid.group_size == -1:
        return QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.symmetric,
                                strategy="channel")
    return QuantizationArgs(num_bits=grid.bits, type="int", symmetric=grid.symmetric,
                            strategy="group", group_size=grid.group_size)


def stored_dense(quantized: QuantizedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight exactly as compressed-tensors' loaders dequantize it for a model loaded in
    `dtype`: transformers casts the stored scales to the model's dtype and the library
    computes `(q − z) · s` in it. The codes are exact in `dtype` and the scale is what the
    cast makes of it (bfloat16 rounds a float16 scale), so the product is one rounding whatever
    the order of operations: bit for bit what the loader gets (a test reloads in a fresh
    process to keep it so)."""
    grid = quantized.grid
    product = product_dtype(grid, dtype)
    width = grid.width(quantized.codes.shape[1])
    scale = loaded_scale(quantized.scale, grid, product).repeat_interleave(width, dim=1)
    codes = quantized.codes.to(product)
    if not grid.symmetric:
        codes = codes - quantized.zero.to(product).repeat_interleave(width, dim=1)
    return (codes * scale).to(dtype)


def product_dtype(grid: Grid, dtype: torch.dtype) -> torch.dtype:
    """The dtype a loader of a `dtype` model multiplies codes and scales in (`Grid`)."""
    return grid.scale_dtype if grid.product_in_scale_dtype else dtype


def loaded_scale(scale: torch.Tensor, grid: Grid, dtype: torch.dtype) -> torch.Tensor:
    """The scales as a loader multiplying in `dtype` takes them: stored in the grid's scale
    dtype, then cast to `dtype` (bfloat16 rounds a float16 scale)."""
    return scale.to(grid.scale_dtype).to(dtype)


def install(layer: nn.Module, quantized: QuantizedWeight) -> torch.Tensor:
    """Write the stored weight into `layer` (its dtype) and attach what saving needs."""
    weight = layer.weight.data
    weight.copy_(stored_dense(quantized, weight.dtype).to(weight.device))
    setattr(layer, QUANT_ATTR, LayerQuant(
        quantized.scale.to(quantized.grid.scale_dtype).cpu(), quantized.zero.cpu(),
        quantized.grid))
    return weight


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every quantized layer by name: Linear modules, and expert matrices (by their saved,
    per-expert names)."""
    found = {n: m for n, m in model.named_modules() if getattr(m, QUANT_ATTR, None) is not None}
    found.update({n: layer for n, layer in expert_layers(model).items()
                  if getattr(layer, QUANT_ATTR, None) is not None})
    return found


def layer_codes(layer: nn.Module) -> torch.Tensor:
    """The int8 codes of a quantized layer, recovered from its weight and checked exact."""
    return weight_codes(layer.weight.data, getattr(layer, QUANT_ATTR))


def weight_codes(weight: torch.Tensor, quant: LayerQuant) -> torch.Tensor:
    """The int8 codes of a weight on `quant`'s grid, checked to dequantize to it exactly."""
    weight = weight.detach().cpu()
    width = quant.grid.width(weight.shape[1])
    # divide by the scale `stored_dense` multiplied by (the float16 one put bfloat16 int8 codes
    # near 127 off by one)
    scale = loaded_scale(quant.scale, quant.grid, product_dtype(quant.grid, weight.dtype)).float()
    scale = scale.repeat_interleave(width, dim=1)
    zero = quant.zero.to(torch.float32).repeat_interleave(width, dim=1)
    codes = codes_of(weight.to(torch.float32), scale, zero, quant.grid).to(torch.int8)
    again = stored_dense(QuantizedWeight(codes, quant.scale.float(), quant.zero, quant.grid),
                         weight.dtype)
    if not torch.equal(again, weight):
        raise ValueError("a quantized layer's weight is off its grid (changed after quantizing)")
    return codes


def _fused_parameters(model: nn.Module, layers: dict[str, nn.Module]) -> list[str]:
    """The fused experts parameters whose every expert matrix is quantized (saved packed,
    per expert); one only partly quantized cannot be saved in any layout a loader reads."""
    by_fused: dict[str, list[str]] = defaultdict(list)
    for name, layer in expert_layers(model).items():
        by_fused[layer.fused].append(name)
    done = []
    for fused, names in by_fused.items():
        quantized = [n for n in names if n in layers]
        if quantized and len(quantized) != len(names):
            raise ValueError(f"{fused}: {len(quantized)} of its {len(names)} expert matrices "
                             "are quantized; a checkpoint holds all experts of a parameter "
                             "packed or none")
        if quantized:
            done.append(fused)
    return done


def loads_packed(model: nn.Module, layers: Iterable[nn.Module], symmetric: bool = True) -> bool:
    """Whether stock transformers can load these quantized layers packed (`packed_blocker`)."""
    return packed_blocker(model, layers, symmetric) is None


def packed_blocker(model: nn.Module, layers: Iterable[nn.Module],
                   symmetric: bool = True) -> str | None:
    """Why stock transformers cannot load these layers packed, or None.

    An asymmetric grid: its packed zero points meet a parameter of the wrong shape
    (`ZERO_POINT_BLOCKER`; a packed checkpoint, llm-compressor's included, is refused with a
    size mismatch). A layer class: transformers' loader swaps each targeted layer's `weight`
    for `weight_packed` / `weight_scale` before reading the file, then runs the model's own
    weight initialisation on every module; some architectures' initialisation reads
    `.weight` of their own `nn.Linear` subclass unconditionally (Falcon: `'FalconLinear'
    object has no attribute 'weight'`), so such a checkpoint would load nowhere. Asked of
    the model itself, generically: its `_init_weights` runs on a weightless stand-in of each
    layer class, on the meta device (nothing of the real layer is touched)."""
    if not symmetric:
        return ZERO_POINT_BLOCKER
    initialise = getattr(model, "_init_weights", None)
    if initialise is None:
        return None
    classes = {type(layer): layer for layer in layers if not isinstance(layer, ExpertLayer)}
    for layer in classes.values():
        probe = copy.copy(layer)  # given dicts of its own below: the layer's stay untouched
        probe._parameters = {name: None if value is None else nn.Parameter(
            torch.empty_like(value, device="meta"), requires_grad=False)
            for name, value in layer._parameters.items() if name != "weight"}
        probe._buffers = {name: None if value is None else torch.empty_like(value, device="meta")
                          for name, value in layer._buffers.items()}
        probe._modules = {}
        try:
            with torch.no_grad():
                initialise(probe)
        except AttributeError:
            return (f"{type(layer).__name__}: the architecture's weight initialisation reads "
                    "a packed layer's missing `weight`")
    return None


EXPERTS_TARGET = r"re:.*\.experts\.\d+\..*"  # per-expert saved names; never a runtime module


def _scheme(model: nn.Module, name: str, layer: nn.Module) -> tuple[str, Any, Any]:
    """(format, weight args, input-activation args or None) of one quantized layer."""
    record: CheckpointQuant = getattr(layer, QUANT_ATTR)
    inputs = input_quant(model, name)
    return record.format, record.weight_args(), None if inputs is None else inputs[0].args()


def quantization_config(model: nn.Module, layers: dict[str, nn.Module]):
    """compressed-tensors' `QuantizationConfig`. One scheme for every layer: one group
    targeting `Linear` (what llm-compressor writes, and vLLM expects). Several: one group per
    scheme of the dense layers, each targeting its layers by name, and one for all the expert
    matrices, targeting them by their per-expert names (transformers finds the experts' scheme
    as the group whose `re:` targets mention experts). Every other Linear (the LM head,
    excluded layers) and every router is listed under `ignore`."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme

    schemes: dict[str, tuple[str, Any, Any]] = {}
    by_scheme: dict[str, list[str]] = defaultdict(list)
    expert_schemes = set()
    for name, layer in layers.items():
        scheme = _scheme(model, name, layer)
        key = repr((scheme[0], scheme[1], scheme[2]))
        schemes[key] = scheme
        if isinstance(layer, ExpertLayer):
            expert_schemes.add(key)
        else:
            by_scheme[key].append(name)
    if len(expert_schemes) > 1:
        raise ValueError("the expert matrices were quantized with different schemes; a "
                         "checkpoint holds one scheme for all experts")

    def group(key: str, targets: list[str]) -> Any:
        fmt, weights, inputs = schemes[key]
        return QuantizationScheme(targets=targets, weights=weights, input_activations=inputs,
                                  format=fmt)

    groups = {}
    if len(set(by_scheme) | expert_schemes) == 1:
        groups["group_0"] = group(next(iter(set(by_scheme) | expert_schemes)), ["Linear"])
    else:
        for index, (key, names) in enumerate(by_scheme.items()):
            groups[f"group_{index}"] = group(key, [f"re:^{re.escape(n)}$" for n in names])
        for key in expert_schemes:
            groups["experts"] = group(key, [EXPERTS_TARGET])
    formats = {scheme[0] for scheme in schemes.values()}
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers]
    ignore += sorted(router_names(model) - set(ignore))  # a router is a Linear to vLLM
    return QuantizationConfig(config_groups=groups,
                              format=formats.pop() if len(formats) == 1 else "mixed-precision",
                              quantization_status="compressed", ignore=ignore)


def save(model: nn.Module, folder: Path) -> CheckpointInfo | None:
    """Write a GPTQ / RTN model as compressed-tensors; None for any other model."""
    layers = quantized_layers(model)
    if not layers:
        return None
    from compressed_tensors.compressors import ModelCompressor

    state = dict(model.state_dict())
    for name in _fused_parameters(model, layers):
        del state[name]  # every expert matrix of it is written packed below, one by one
    for name, layer in layers.items():
        state.pop(f"{name}.weight", None)
        record: CheckpointQuant = getattr(layer, QUANT_ATTR)
        state.update({f"{name}.{k}": v for k, v in record.serialize(layer.weight.data).items()})
        inputs = input_quant(model, name)
        if inputs is not None and inputs[1] is not None:  # a static activation scale
            state[f"{name}.{inputs[0].static_name}"] = inputs[1].detach().float().reshape(
                1).cpu()
    model.save_pretrained(folder, state_dict=state, safe_serialization=True,
                          max_shard_size=MAX_SHARD)
    config = quantization_config(model, layers)
    ModelCompressor(quantization_config=config).update_config(str(folder))
    records = [getattr(m, QUANT_ATTR) for m in layers.values()]
    blocker = packed_blocker(model, layers.values(), all(_symmetric(r) for r in records))
    if blocker is not None:
        _load_dequantized(folder, config, f"{type(model).__name__}, {blocker}")
    labels = "/".join(sorted({r.bits_label() for r in records}))
    formats = "/".join(sorted({r.format for r in records}))
    return CheckpointInfo(format=f"{FORMAT_NAME} ({formats})", needs_compressors_load=False,
                          how_to_load=HOW_TO_LOAD + (
                              "" if blocker is None else DEQUANTIZED_NOTE.format(why=blocker))
                          + _dtype_note(model, records) + experts_note(layers, QUANT_ATTR),
                          how_to_serve=HOW_TO_SERVE.format(labels=labels, formats=formats)
                          + " " + serving_notes((group.weights, group.input_activations)
                                                for group in config.config_groups.values()))


def _symmetric(record: CheckpointQuant) -> bool:
    grid = getattr(record, "grid", None)  # integer grids; float formats have no zero point
    return grid is None or grid.symmetric


# compressed-tensors 0.20 decompresses these formats to one dtype whatever the model's
DECOMPRESSED_DTYPES = {"nvfp4-pack-quantized": torch.bfloat16}


def _model_dtype(model: nn.Module) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def _dtype_note(model: nn.Module, records: list[CheckpointQuant]) -> str:
    """What a loader must know when the library decompresses the checkpoint's weights to
    another dtype than the model's: stock transformers then fails at the first forward (a
    bfloat16 weight under float32 inputs) unless the model is loaded in that dtype;
    `compressors.load` casts them back (the values are exact in either)."""
    dtype = _model_dtype(model)
    fixed = {DECOMPRESSED_DTYPES[r.format]: r.format for r in records
             if DECOMPRESSED_DTYPES.get(r.format, dtype) != dtype}
    if not fixed:
        return ""
    target, fmt = next(iter(fixed.items()))
    name = str(target).removeprefix("torch.")
    return (f" compressed-tensors decompresses {fmt} weights to {name} whatever the model's "
            f"dtype ({str(dtype).removeprefix('torch.')}): with transformers load it with "
            f"`dtype=torch.{name}`; `compressors.load` gives the weights back in the model's "
            "dtype.")


def _load_dequantized(folder: Path, config: Any, why: str) -> None:
    """Mark the checkpoint for transformers to decompress while loading (`dequantize: true`,
    read by its `CompressedTensorsConfig`; compressed-tensors and vLLM ignore the key): the
    one way it loads a model whose layers cannot be held packed (`packed_blocker`). That
    path decompresses every dense layer with one scheme, weights only, so the step gave them
    one grid (`engine.quantization.grids_for`) and activation schemes are refused."""
    dense = [group for group in config.config_groups.values()
             if EXPERTS_TARGET not in group.targets]
    if len(dense) > 1 or any(group.input_activations is not None for group in dense):
        raise ValueError(f"compressed-tensors: transformers loads this model ({why}) only "
                         "dequantized, and its dequantizing loader takes one weight-only "
                         "scheme for all "
                         "dense layers, not activation quantization or several schemes; use "
                         "a weight-only method (gptq, rtn, awq)")
    path = model_file(folder, CONFIG_FILE)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["quantization_config"]["dequantize"] = True
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def is_compressed_tensors(folder: Path) -> bool:
    if optional_file(Path(folder), CONFIG_FILE) is None:
        return False
    quant = model_json(Path(folder), CONFIG_FILE).get("quantization_config") or {}
    return quant.get("quant_method") == FORMAT_NAME


def load(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    """A compressed-tensors checkpoint, decompressed into plain Linear layers; else None.

    transformers loads the packed tensors and would decompress them on the first forward
    pass; here every layer is decompressed at once and its quantization metadata removed, so
    the model is the plain dense model the step evaluated (counts, saving, training work as
    on any model)."""
    if not is_compressed_tensors(folder):
        return None
    from compressed_tensors.compressors.base import decompress_module
    from compressed_tensors.quantization.utils import is_module_quantized

    model = load_pretrained(Path(folder), dtype)
    target = _model_dtype(model)
    for module in model.modules():
        if is_module_quantized(module):
            decompress_module(module)
            _plain(module)
            if module.weight.dtype != target:  # DECOMPRESSED_DTYPES: exact in the model's
                module.weight.data = module.weight.data.to(target)
    hook = getattr(model, "ct_decompress_hook", None)
    if hook is not None:
        hook.remove()
        del model.ct_decompress_hook
    redo_nvfp4_experts(model, Path(folder))  # transformers#48371: see io.nvfp4_experts
    return model


def _plain(module: nn.Module) -> None:
    """A decompressed layer back to a plain Linear: quantization parameters, scheme and any
    wrapped forward removed (the weight itself is what the step computed with)."""
    for name in [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]:
        delattr(module, name)
    if hasattr(module.forward, "__wrapped__"):
        module.forward = module.forward.__wrapped__.__get__(module)
    for attr in ("quantization_scheme", "quantization_status", "quantization_enabled"):
        if hasattr(module, attr):
            delattr(module, attr)


FORMAT = CheckpointFormat(FORMAT_NAME, save, load)
