"""NVFP4 expert matrices of a mixture-of-experts checkpoint, decompressed with their global scale.

transformers 5 (through 5.25 at least; huggingface/transformers#48371, fix proposed in #48372)
decompresses the per-expert tensors of a compressed-tensors checkpoint while stacking them into
the fused experts parameters, and for NVFP4 it collects `weight_packed`, `weight_scale` and
`weight_shape` but not `weight_global_scale`: every expert comes back multiplied by its global
scale, silently. The checkpoint itself is right (vLLM reads all four tensors), so
`compressors.load` redoes those experts from the files with compressed-tensors' own
decompression, the function its dense layers go through, and writes each into its slice of the
fused parameter. Where each stored matrix lives in the fused parameters is what
`engine.experts` learns from the model's own conversion mapping, asked of a weightless copy of
the architecture (the loaded model's mapping carries the quantizer's conversions).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from compressors.engine.experts import expert_layers
from compressors.io.model_files import CONFIG_FILE, model_json
from compressors.io.stream import TensorSource

GLOBAL = ".weight_global_scale"
FORMAT = "nvfp4-pack-quantized"


def _skeleton(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device, without quantization: its expert layers
    name and place every stored expert matrix."""
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        return type(model)._from_config(config)


def _experts_scheme(folder: Path):
    """The compressed-tensors scheme the checkpoint's expert matrices are stored in (the
    group whose targets name experts, or the only group), if it is NVFP4; else None."""
    from compressed_tensors.quantization import QuantizationConfig

    quant = model_json(folder, CONFIG_FILE).get("quantization_config") or {}
    groups = list(QuantizationConfig.model_validate(quant).config_groups.values())
    experts = [g for g in groups if any("experts" in target for target in g.targets)]
    scheme = experts[0] if experts else (groups[0] if len(groups) == 1 else None)
    fmt = (scheme.format or quant.get("format")) if scheme is not None else None
    return scheme if fmt == FORMAT else None


def redo_nvfp4_experts(model: nn.Module, folder: Path) -> int:
    """Decompress every stored NVFP4 expert matrix (with its global scale) into the loaded
    `model`'s fused parameters; returns how many (0: no NVFP4 experts)."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor

    folder = Path(folder)
    scheme = _experts_scheme(folder)
    if scheme is None:
        return 0
    source = TensorSource(folder)
    stored = [name.removesuffix(GLOBAL) for name in source.names() if name.endswith(GLOBAL)]
    if not stored:
        return 0
    layers = expert_layers(_skeleton(model))
    wanted = [name for name in stored if name in layers]
    for name in wanted:
        tensors = source.load([f"{name}.weight_packed", f"{name}.weight_scale",
                               f"{name}{GLOBAL}"])
        state = {key.rpartition(".")[2]: value for key, value in tensors.items()}
        weight = NVFP4PackedCompressor.decompress(state, scheme)["weight"]
        layer = layers[name]
        matrix = model.get_parameter(layer.fused).data[layer.expert]
        matrix = matrix.t() if layer.transposed else matrix
        target = matrix if layer.rows is None else matrix[layer.rows]
        target.copy_(weight.to(target.dtype))
    return len(wanted)


def experts_note(layers: dict[str, nn.Module], quant_attr: str) -> str:
    """What the model card tells a transformers user of a checkpoint with NVFP4 experts."""
    from compressors.engine.layers import ExpertLayer

    if not any(isinstance(layer, ExpertLayer) and getattr(layer, quant_attr).format == FORMAT
               for layer in layers.values()):
        return ""
    return (" Its expert matrices are NVFP4, which stock transformers (5.25) decompresses "
            "without their global scale (huggingface/transformers#48371): load it with "
            "`compressors.load(path)` (or serve it with vLLM), which read them right.")
