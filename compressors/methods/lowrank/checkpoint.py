"""Checkpoint format for factorized models: the factors themselves in safetensors.

`model.safetensors` holds `<layer>.up` / `<layer>.down` (and biases) in place of each
factorized layer's weight, so the file is genuinely smaller; `lowrank.json` says which layers
are factorized, at what rank, and whether each came from a Linear or a GPT-2 Conv1D.
`config.json` is the base architecture's, so `compressors.load(out)` builds that architecture,
swaps in `LowRankLinear` layers where `lowrank.json` says, maps the saved names back to the
model's with transformers' own load-time conversions (`save_pretrained` writes legacy names
such as GPT-NeoX's `embed_out` and a mixture-of-experts model's experts one by one) and loads
the tensors strictly (only tied weights may be absent from the file). Plain `from_pretrained`
cannot read these factors; a recipe that needs a standard checkpoint sets `export_dense: true`.
Declared in the registry as this method's format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from compressors.engine.modules import is_causal_lm
from compressors.io.conversion import StreamConversion
from compressors.io.formats import MAX_SHARD, OUR_LOADER, CheckpointFormat
from compressors.io.loading import auto_class
from compressors.io.model_files import model_file, model_json, optional_file
from compressors.methods.lowrank.layers import install_empty, lowrank_layers
from compressors.report.schema import CheckpointInfo

FORMAT_FILE = "lowrank.json"
FORMAT_NAME = "compressors-lowrank"
FORMAT_VERSION = 1


def save(model: nn.Module, folder: Path) -> CheckpointInfo | None:
    """Write a model holding LowRankLinear layers; None (nothing written) for any other."""
    layers = lowrank_layers(model)
    if not layers:
        return None
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD)
    spec: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "causal_lm": is_causal_lm(model),
        "model_class": type(model).__name__,
        "layers": {name: layer.spec() for name, layer in layers.items()},
    }
    (Path(folder) / FORMAT_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return CheckpointInfo(format=FORMAT_NAME, needs_compressors_load=True,
                          how_to_load=OUR_LOADER + " (a recipe that needs a standard "
                          "checkpoint sets `export_dense: true` on the lowrank step.)")


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(model_file(folder, path.name))))
    if not state:
        raise FileNotFoundError(f"{folder}: {FORMAT_FILE} present but no .safetensors weights")
    return state


def load(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    """A factorized checkpoint rebuilt with its LowRankLinear layers; None for other formats."""
    folder = Path(folder)
    if optional_file(folder, FORMAT_FILE) is None:
        return None
    spec = model_json(folder, FORMAT_FILE)
    if spec.get("format") != FORMAT_NAME or spec.get("version") != FORMAT_VERSION:
        raise ValueError(f"{FORMAT_FILE}: not a {FORMAT_NAME} v{FORMAT_VERSION} description")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = auto_class(spec["causal_lm"]).from_config(config, trust_remote_code=False)
    state = _state_dict(folder)
    model.to(next(iter(state.values())).dtype)
    install_empty(model, spec["layers"])
    # `save_pretrained` wrote the names transformers' checkpoints use (legacy names, experts
    # one by one); the same conversions `from_pretrained` applies map them back
    state = StreamConversion(model, list(state)).to_model(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{folder}: tensors the model does not have: {unexpected[:5]}")
    if missing:
        model.tie_weights()
        loaded = {t.data_ptr() for name, t in model.state_dict().items() if name in state}
        untied = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]
        if untied:
            raise ValueError(f"{folder}: weights missing from the checkpoint: {untied[:5]}")
    if dtype is not None:
        model.to(dtype)
    model.eval()
    return model


FORMAT = CheckpointFormat(FORMAT_NAME, save, load)
