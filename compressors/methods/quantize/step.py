"""The `quantize` step: swap Linear layers for bitsandbytes ones, optionally add LoRC factors.

Quantizing goes through transformers' own bitsandbytes loader (save the current weights to a
temporary folder, reload with a `BitsAndBytesConfig`), so the result carries the same
`quantization_config` and module layout as any bitsandbytes checkpoint and saves and reloads
with stock transformers. Pruned zeros survive: every code book here maps 0 to exactly 0.
"""

from __future__ import annotations

import copy
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors.engine.context import StepContext, StepResult
from compressors.engine.layers import memory_footprint
from compressors.engine.modules import linear_layers, select_layers, weight_matrix
from compressors.malloc import release_free_memory, small_tensors_mapped
from compressors.methods.quantize import lorc
from compressors.methods.quantize.config import QuantizeConfig
from compressors.methods.quantize.layers import (
    attach_correction,
    bnb_layers,
    dequantize,
    is_bnb_layer,
    remember_canonical,
)
from compressors.methods.quantize.section import (
    LORC_NOTE,
    Footprint,
    LorcSection,
    QuantizeSection,
)

DEFAULT_4BIT_BLOCKSIZE = 64  # what transformers' loader quantizes with


def bnb_config(config: QuantizeConfig, skip_names: list[str]):
    """The transformers `BitsAndBytesConfig` for this step; `skip_names` are exact layer names."""
    from transformers import BitsAndBytesConfig

    skip = [re.escape(name) for name in skip_names]
    if config.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=config.threshold,
                                  llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=config.torch_compute_dtype, llm_int8_skip_modules=skip,
    )


def split_targets(
    model: nn.Module, config: QuantizeConfig
) -> tuple[dict[str, nn.Module], list[str]]:
    """(layers to quantize, Linear-like layers kept in full precision)."""
    targets = select_layers(model, config.include, config.exclude)
    skipped = [name for name in linear_layers(model) if name not in targets]
    return targets, skipped


def _check_shapes(targets: dict[str, nn.Module], config: QuantizeConfig,
                  device: torch.device) -> None:
    """Every target must have a shape bitsandbytes takes (`QuantizeConfig.layer_error`)."""
    for name, layer in targets.items():
        out_features, in_features = weight_matrix(layer).shape
        error = config.layer_error(name, out_features, in_features, device.type)
        if error:
            raise ValueError(error)


def _check_swappable(targets: dict[str, nn.Module], quantization_config: Any) -> None:
    """transformers' bitsandbytes loader replaces only the layers its own rule takes (plain
    `nn.Linear` and GPT-2 Conv1D, not a subclass such as Falcon's `FalconLinear`); it would
    leave any other selected layer in full precision, and a checkpoint holding one quantized
    would not load back with transformers. Asked of transformers' own swap, on a meta-device
    stand-in of each layer class, and refused before anything changes."""
    from transformers.integrations.bitsandbytes import replace_with_bnb_linear
    from transformers.utils import logging as hf_logging

    samples = {type(layer): name for name, layer in targets.items()}
    holder = nn.Module()
    for index, name in enumerate(samples.values()):
        stand_in = copy.copy(targets[name])  # given dicts of its own: the layer's stay as is
        stand_in._parameters = {key: None if value is None else nn.Parameter(
            torch.empty_like(value, device="meta"), requires_grad=False)
            for key, value in stand_in._parameters.items()}
        stand_in._modules = {}
        holder.add_module(str(index), stand_in)
    quiet = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its "no linear modules were found" is this answer
    try:
        replace_with_bnb_linear(holder, quantization_config=quantization_config)
    finally:
        hf_logging.set_verbosity(quiet)
    kept = [(cls, name) for index, (cls, name) in enumerate(samples.items())
            if not is_bnb_layer(holder.get_submodule(str(index)))]
    if kept:
        cls, name = kept[0]
        count = sum(type(layer) is cls for layer in targets.values())
        raise ValueError(
            f"quantize: {count} selected layers are {cls.__name__} (e.g. {name}), which "
            "transformers' bitsandbytes integration does not replace (only plain nn.Linear "
            "and Conv1D): a checkpoint holding them quantized would not load back; exclude "
            "them, or use gptq or rtn for this model")


def _dense_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def reload_quantized(
    model: nn.Module, quantization_config: Any, device: torch.device
) -> nn.Module:
    """Round-trip through a temporary safetensors folder into bitsandbytes layers.

    The loader copies each weight out of the file and quantizes it: a few MB at a time, below
    the pipeline's mmap threshold, so in the heap, where the freed copies piled up as 140-410
    MB of garbage that varied run to run (nf4 on SmolLM2: peaks of 1.80-2.29 GB). With 1 MiB
    tensors mapped and unmapped on their own the peak is 1.80 GB every time."""
    config = getattr(model, "config", None)
    existing = getattr(config, "quantization_config", None)
    if existing is not None:
        method = existing.get("quant_method") if isinstance(existing, dict) else getattr(
            existing, "quant_method", None)
        if str(getattr(method, "value", method)) != "gguf":
            raise ValueError(f"quantize: the model is already quantized ({method})")
        del config.quantization_config  # GGUF is dequantized on load: plain weights now
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        model.save_pretrained(Path(tmp), safe_serialization=True)
        with small_tensors_mapped():
            quantized = type(model).from_pretrained(
                tmp, quantization_config=quantization_config, dtype=_dense_dtype(model),
                device_map={"": device}, local_files_only=True, trust_remote_code=False,
            )
    _own_memory(quantized)
    release_free_memory()
    quantized.eval()
    return quantized


def _own_memory(model: nn.Module) -> None:
    """Copy the tensors transformers left as views of the temporary file into process memory.

    The loader memory-maps the file and keeps the layers it does not quantize (embeddings,
    norms, skipped layers) as views of it, so the deleted file's mapping, every page of which
    was read while quantizing, stays resident: 415 MB of RSS on SmolLM2 in float32, more than
    the quantized model itself. Copied, the mapping goes with the last view.
    """
    import bitsandbytes as bnb

    packed = (bnb.nn.Params4bit, bnb.nn.Int8Params)
    for parameter in model.parameters():
        if not isinstance(parameter, packed):
            parameter.data = parameter.data.clone()
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None:
                module._buffers[name] = buffer.clone()


def requantize_blocksize(
    quantized: nn.Module, originals: dict[str, torch.Tensor], blocksize: int
) -> None:
    """transformers always uses 64-weight blocks; re-quantize from the dense weights otherwise."""
    import bitsandbytes as bnb

    layers = dict(bnb_layers(quantized))
    for name, dense in originals.items():
        layer = layers[name]
        settings = {k: v for k, v in layer.weight.__dict__.items()
                    if k not in {"quant_state", "bnb_quantized", "blocksize"}}
        weight = bnb.nn.Params4bit(dense.detach().clone(), requires_grad=False,
                                   blocksize=blocksize, **settings)
        layer.weight = weight.to(layer.weight.device)


def add_corrections(
    quantized: nn.Module, originals: dict[str, torch.Tensor], rank: int, progress
) -> LorcSection:
    """LoRC on every quantized layer; returns the rank / extra bytes / layer-error summary."""
    layers = dict(bnb_layers(quantized))
    extra_bytes = extra_parameters = 0
    errors_before: list[float] = []
    errors_after: list[float] = []
    for index, (name, dense) in enumerate(originals.items()):
        layer = layers[name]
        reference = dense.detach().float().to(layer.weight.device)
        approx = dequantize(layer)
        up, down = lorc.low_rank_factors(reference - approx, rank)
        attach_correction(layer, up, down)
        extra_bytes += lorc.factor_bytes(up, down)
        extra_parameters += up.numel() + down.numel()
        errors_before.append(lorc.relative_error(reference, approx))
        errors_after.append(lorc.relative_error(reference, lorc.corrected(approx, up, down)))
        progress((index + 1) / len(originals), f"LoRC rank {rank}: {name}")
    return LorcSection(
        rank=rank, layers=len(originals), factor_dtype=str(lorc.FACTOR_DTYPE),
        extra_parameters=extra_parameters, extra_bytes=extra_bytes,
        mean_relative_error_before=sum(errors_before) / len(errors_before),
        mean_relative_error_after=sum(errors_after) / len(errors_after), note=LORC_NOTE,
    )


def zeros_kept(quantized: nn.Module, originals: dict[str, torch.Tensor]) -> dict[str, int]:
    """Exact zeros in the dense weights, and how many are still exact zeros after quantizing."""
    layers = dict(bnb_layers(quantized))
    before = kept = after = 0
    for name, dense in originals.items():
        zero = dense == 0
        deq_zero = dequantize(layers[name]).to(zero.device) == 0
        before += int(zero.sum())
        kept += int((zero & deq_zero).sum())
        after += int(deq_zero.sum())
    return {"zeros_before": before, "zeros_kept": kept, "zeros_after": after}


def effective_compute(config: QuantizeConfig, device: torch.device) -> str:
    """What the matmul really runs in: bitsandbytes' AVX512-BF16 CPU kernel ignores
    `compute_dtype` and works in bfloat16; LLM.int8 runs float16 inputs through int8."""
    if config.bits == 8:
        return "LLM.int8: int8 x int8, float16 outlier columns above the threshold"
    if device.type == "cpu":
        from bitsandbytes.functional import has_avx512bf16

        if has_avx512bf16():
            return "bfloat16 (bitsandbytes AVX512-BF16 CPU kernel)"
    return config.compute_dtype


def run(model: nn.Module, config: QuantizeConfig, context: StepContext) -> StepResult:
    if any(is_bnb_layer(m) for m in model.modules()):
        raise ValueError("quantize: the model is already quantized; a recipe may quantize once")
    targets, skipped = split_targets(model, config)
    _check_shapes(targets, config, context.device)
    footprint_before = memory_footprint(model)
    originals = {name: weight_matrix(layer) for name, layer in targets.items()}
    context.progress(0.05, f"quantizing {len(targets)} layers to {config.label}")
    began = time.perf_counter()
    quantization_config = bnb_config(config, skipped)
    _check_swappable(targets, quantization_config)
    quantized = reload_quantized(model, quantization_config, context.device)
    if config.bits == 4 and config.blocksize != DEFAULT_4BIT_BLOCKSIZE:
        requantize_blocksize(quantized, originals, config.blocksize)
    remember_canonical(quantized)
    zeros = zeros_kept(quantized, originals)
    corrections = (add_corrections(quantized, originals, config.lorc_rank, context.progress)
                   if config.lorc_rank else None)
    seconds = time.perf_counter() - began
    section = QuantizeSection(
        scheme=config.label, bits=config.bits, quantized_layers=len(targets),
        skipped_layers=skipped, compute=effective_compute(config, context.device), **zeros,
        lorc=corrections, quantize_seconds=seconds,
        footprint_bytes=Footprint(before=footprint_before, after=memory_footprint(quantized)))
    details: dict[str, Any] = {"scheme": config.label, "quantized_layers": len(targets),
                               "quantize_seconds": seconds}
    if corrections is not None:
        details["lorc_extra_bytes"] = corrections.extra_bytes
    context.progress(1.0, "quantized")
    return StepResult(details=details, section=section, model=quantized)
