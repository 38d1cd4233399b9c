"""Loading models from what users hand us, and saving checkpoints standard tools load.

Accepted sources: a bundled name (`smollm2-135m`, `all-minilm-l6-v2`), a local Hugging Face
folder (safetensors, or `.bin` read with `torch.load(weights_only=True)`, which transformers
does for us), or a local `.gguf` file. Remote code is never trusted and nothing is downloaded:
anything else fails at once with a message saying this service works offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors import assets
from compressors.io.formats import load_special, save_any
from compressors.io.model_files import check_model_folder, model_config, model_file
from compressors.report.schema import CheckpointInfo

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
LOCAL_ONLY: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}


class ModelNotFoundError(ValueError):
    """The model reference is not a bundled name, local folder or GGUF file."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    source: Path
    is_causal_lm: bool


def resolve_model(spec: str | Path) -> Path:
    """Turn a user's model reference into a local path, or explain why it cannot be used.

    A folder is vetted here (`model_files.check_model_folder`), before any loader sees it:
    every loader of this module gets its source from this function."""
    bundled = assets.resolve_bundled(str(spec))
    if bundled is not None:
        if bundled.is_dir():
            check_model_folder(bundled)
        return bundled
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        check_model_folder(path)
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.exists():
        raise ModelNotFoundError(
            f"model {str(spec)!r}: a model must be an HF folder with config.json or a .gguf file"
        )
    raise ModelNotFoundError(
        f"model {str(spec)!r} is not a bundled model ({', '.join(assets.BUNDLED_MODELS)}) "
        "nor a local path, and this service never downloads from a model hub (offline). "
        "Upload the model folder, or pass a local path."
    )


def config_is_causal(config: Any) -> bool:
    """From a model config: does its architecture end in a language-model head?"""
    return any(a.endswith(_CAUSAL_SUFFIXES) for a in getattr(config, "architectures", None) or [])


def auto_class(causal: bool) -> Any:
    """The transformers Auto class for a causal LM or a bare encoder."""
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if causal else AutoModel


def _dtype_name(value: Any) -> str | None:
    name = str(value).removeprefix("torch.") if value is not None else None
    return name if name in _DTYPES else None


def checkpoint_dtype(source: Path) -> torch.dtype:
    """The dtype a checkpoint stores its weights in (config.json's `dtype` / `torch_dtype`);
    float32 for GGUF files (dequantized on load) and when the config does not say."""
    if source.is_file():
        return torch.float32
    config = model_config(source)
    name = _dtype_name(config.get("dtype")) or _dtype_name(config.get("torch_dtype"))
    return _DTYPES[name] if name else torch.float32


def run_dtype(source: Path, requested: str = "auto") -> torch.dtype:
    """The dtype a run holds the model in: the recipe's, or the checkpoint's own for auto."""
    return checkpoint_dtype(source) if requested == "auto" else _DTYPES[requested]


def _pretrained_args(source: Path) -> tuple[Path, dict[str, Any]]:
    common = dict(LOCAL_ONLY)
    if source.suffix == ".gguf":
        common["gguf_file"] = source.name
        return source.parent, common
    return source, common


def load_model(spec: str | Path, dtype: torch.dtype | str = "auto") -> LoadedModel:
    """Load model and tokenizer from a local source, in `dtype` ("auto": the checkpoint's)."""
    from transformers import AutoConfig, AutoTokenizer

    source = resolve_model(spec)
    if isinstance(dtype, str):
        dtype = run_dtype(source, dtype)
    folder, common = _pretrained_args(source)
    config = AutoConfig.from_pretrained(folder, **common)
    causal = config_is_causal(config) or source.suffix == ".gguf"
    model = auto_class(causal).from_pretrained(folder, dtype=dtype, **common)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    return LoadedModel(model, tokenizer, source, causal)


def load_skeleton(source: Path, dtype: torch.dtype) -> LoadedModel:
    """The model's modules with every parameter on the meta device (no weights read), buffers
    computed as usual; for streaming, which fills in one block at a time."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoTokenizer

    folder, common = _pretrained_args(source)
    config = AutoConfig.from_pretrained(folder, **common)
    config.dtype = dtype
    causal = config_is_causal(config)
    with init_empty_weights(include_buffers=False):
        model = auto_class(causal).from_config(config, dtype=dtype, trust_remote_code=False)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    return LoadedModel(model, tokenizer, source, causal)


def save_checkpoint(model: nn.Module, tokenizer: Any, folder: Path) -> CheckpointInfo:
    """Weights in the model's format (sharded safetensors with an index above 2 GB), config
    and tokenizer files; returns what the format says about loading it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "quantization_config", None) is not None:
        quant = config.quantization_config
        method = quant.get("quant_method") if isinstance(quant, dict) else quant.quant_method
        if str(method) == "gguf":  # dequantized on load: what we save is plain weights
            del config.quantization_config
    info = save_any(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return info


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight files, each through `model_files.model_file` (a link out of the
    folder is refused, not measured)."""
    return sorted(model_file(folder, p.name) for p in folder.iterdir()
                  if p.suffix in _WEIGHT_SUFFIXES and not p.is_dir())


def size_on_disk(source: Path) -> int:
    """Bytes of weight files: a folder's safetensors/bin shards, or the single GGUF file."""
    if source.is_file():
        return source.stat().st_size
    return sum(p.stat().st_size for p in weight_files(source))


def load_pretrained(folder: Path, dtype: torch.dtype | None = None, **kwargs: Any) -> nn.Module:
    """`from_pretrained` with the right Auto class, offline, never trusting remote code."""
    from transformers import AutoConfig

    check_model_folder(folder)
    config = AutoConfig.from_pretrained(folder, **LOCAL_ONLY)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = auto_class(config_is_causal(config)).from_pretrained(folder, **LOCAL_ONLY, **kwargs)
    model.eval()
    return model


def load(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The one public loader for every checkpoint this project writes.

    The methods' formats (factorized layers, quantization corrections) are tried first; plain
    and bitsandbytes checkpoints load with transformers directly.
    """
    path = Path(folder)
    check_model_folder(path)
    special = load_special(path, dtype)
    return special if special is not None else load_pretrained(path, dtype)

