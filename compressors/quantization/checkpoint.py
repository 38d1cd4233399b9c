"""Checkpoint format for bitsandbytes models: a stock checkpoint, plus LoRC factors beside it.

`model.safetensors` + `config.json` (with `quantization_config`) are exactly what transformers
writes for a bitsandbytes model, so `AutoModelForCausalLM.from_pretrained(out)` reloads it (the
plain quantized model). LoRC factors go to `lorc.safetensors`; `compressors.load(out)` reloads
the checkpoint and re-attaches them. Listed in `compressors.checkpoint_formats`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressors.quantization.layers import (
    attach_correction,
    bnb_layers,
    canonical_4bit_weights,
    corrections,
    remember_canonical,
)

CORRECTIONS_FILE = "lorc.safetensors"


def is_bnb_model(model: nn.Module) -> bool:
    return next(bnb_layers(model), None) is not None


def save(model: nn.Module, folder: Path) -> bool:
    """Write a bitsandbytes model (4-bit layers in their canonical layout) and its factors."""
    if not is_bnb_model(model):
        return False
    from compressors.model_io import MAX_SHARD

    with canonical_4bit_weights(model):
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD)
    found = corrections(model)
    if found:
        tensors = {}
        for name, correction in found.items():
            tensors[f"{name}.up"] = correction.up.detach().contiguous().cpu()
            tensors[f"{name}.down"] = correction.down.detach().contiguous().cpu()
        ranks = sorted({c.rank for c in found.values()})
        save_file(tensors, str(folder / CORRECTIONS_FILE),
                  metadata={"format": "lorc", "ranks": ",".join(map(str, ranks))})
    return True


def load(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    """A bitsandbytes checkpoint with LoRC factors, corrections attached; else None."""
    path = Path(folder) / CORRECTIONS_FILE
    if not path.is_file():
        return None
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from compressors.model_io import _is_causal

    common = {"local_files_only": True, "trust_remote_code": False}
    config = AutoConfig.from_pretrained(folder, **common)
    loader = AutoModelForCausalLM if _is_causal(config) else AutoModel
    kwargs = dict(common, dtype=dtype) if dtype is not None else common
    model = loader.from_pretrained(folder, **kwargs)
    model.eval()
    remember_canonical(model)
    layers = dict(bnb_layers(model))
    factors = load_file(str(path))
    for name in sorted({key.rsplit(".", 1)[0] for key in factors}):
        if name not in layers:
            raise ValueError(f"{path.name}: correction for {name!r}, not a quantized layer")
        attach_correction(layers[name], factors[f"{name}.up"], factors[f"{name}.down"])
    return model
