"""Loading models from what users hand us, and saving checkpoints standard tools load.

Accepted sources: a bundled name (`smollm2-135m`, `all-minilm-l6-v2`), a local Hugging Face
folder (safetensors, or `.bin` read with `torch.load(weights_only=True)`, which transformers
does for us), or a local `.gguf` file. Remote code is never trusted and nothing is downloaded:
anything else fails at once with a message saying this service works offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors import assets, checkpoint_formats

MAX_SHARD = "2GB"
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")


class ModelNotFoundError(ValueError):
    """The model reference is not a bundled name, local folder or GGUF file."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    source: Path
    is_causal_lm: bool


def resolve_model(spec: str | Path) -> Path:
    """Turn a user's model reference into a local path, or explain why it cannot be used."""
    bundled = assets.resolve_bundled(str(spec))
    if bundled is not None:
        return bundled
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"model {str(spec)!r}: a model must be an HF folder with config.json or a .gguf file"
        )
    raise ModelNotFoundError(
        f"model {str(spec)!r} is not a bundled model ({', '.join(assets.bundled_models())}) "
        "nor a local path, and this service never downloads from a model hub (offline). "
        "Upload the model folder, or pass a local path."
    )


def _is_causal(config: Any) -> bool:
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in getattr(config, "architectures", None) or [])


def load_model(spec: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load model and tokenizer from a resolved local source, in `dtype` (fp32 by default)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = resolve_model(spec)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if source.suffix == ".gguf":
        common["gguf_file"] = source.name
        folder = source.parent
    else:
        folder = source
    config = AutoConfig.from_pretrained(folder, **common)
    causal = _is_causal(config) or source.suffix == ".gguf"
    loader = AutoModelForCausalLM if causal else AutoModel
    model = loader.from_pretrained(folder, dtype=dtype, **common)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    return LoadedModel(model, tokenizer, source, causal)


def save_checkpoint(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """config.json + safetensors (sharded with an index above 2 GB) + tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "quantization_config", None) is not None:
        quant = config.quantization_config
        method = quant.get("quant_method") if isinstance(quant, dict) else quant.quant_method
        if str(method) == "gguf":  # dequantized on load: what we save is plain weights
            del config.quantization_config
    if not checkpoint_formats.save_special(model, folder):
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def size_on_disk(source: Path) -> int:
    """Bytes of weight files: a folder's safetensors/bin shards, or the single GGUF file."""
    if source.is_file():
        return source.stat().st_size
    return sum(p.stat().st_size for p in weight_files(source))


def load(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The one public loader for every checkpoint this project writes.

    Formats listed in `checkpoint_formats` (factorized layers, quantization corrections) are
    tried first; plain and bitsandbytes checkpoints load with transformers directly.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = Path(folder)
    special = checkpoint_formats.load_special(path, dtype)
    if special is not None:
        return special
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    config = AutoConfig.from_pretrained(path, **common)
    loader = AutoModelForCausalLM if _is_causal(config) else AutoModel
    kwargs = dict(common)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = loader.from_pretrained(path, **kwargs)
    model.eval()
    return model


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
