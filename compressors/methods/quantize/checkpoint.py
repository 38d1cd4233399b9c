"""Checkpoint format for bitsandbytes models: a stock checkpoint, plus LoRC factors beside it.

`model.safetensors` + `config.json` (with `quantization_config`) are exactly what transformers
writes for a bitsandbytes model, so `AutoModelForCausalLM.from_pretrained(out)` reloads it (the
plain quantized model). LoRC factors go to `lorc.safetensors`; `compressors.load(out)` reloads
the checkpoint and re-attaches them. Declared in the registry as this method's format.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compressors.io.formats import MAX_SHARD, OUR_LOADER, PLAIN_HOW_TO_LOAD, CheckpointFormat
from compressors.io.loading import load_pretrained
from compressors.methods.quantize.layers import (
    attach_correction,
    bnb_layers,
    canonical_4bit_weights,
    corrections,
    remember_canonical,
)
from compressors.report.schema import CheckpointInfo

CORRECTIONS_FILE = "lorc.safetensors"


def is_bnb_model(model: nn.Module) -> bool:
    return next(bnb_layers(model), None) is not None


def save(model: nn.Module, folder: Path) -> CheckpointInfo | None:
    """Write a bitsandbytes model (4-bit layers in their canonical layout) and its factors."""
    if not is_bnb_model(model):
        return None
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
        return CheckpointInfo(format="bitsandbytes+lorc", needs_compressors_load=True,
                              how_to_load=OUR_LOADER + " (`from_pretrained` reads the "
                              "quantized layers without their LoRC corrections.)")
    return CheckpointInfo(format="bitsandbytes", needs_compressors_load=False,
                          how_to_load=PLAIN_HOW_TO_LOAD + " Needs `bitsandbytes` installed.")


def load(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    """A bitsandbytes checkpoint with LoRC factors, corrections attached; else None."""
    path = Path(folder) / CORRECTIONS_FILE
    if not path.is_file():
        return None
    model = load_pretrained(folder, dtype)
    remember_canonical(model)
    layers = dict(bnb_layers(model))
    factors = load_file(str(path))
    for name in sorted({key.rsplit(".", 1)[0] for key in factors}):
        if name not in layers:
            raise ValueError(f"{path.name}: correction for {name!r}, not a quantized layer")
        attach_correction(layers[name], factors[f"{name}.up"], factors[f"{name}.down"])
    return model


FORMAT = CheckpointFormat("bitsandbytes", save, load)
