"""Checkpoint formats: how a model is written, how it is read back, and what a user needs to
load it.

The plain format is transformers' own (`save_pretrained` / `from_pretrained`). Methods bring the
others and declare them in the registry (`Method.formats`; a format several methods write, such
as compressed-tensors, lives in `io/` and each of them declares it); each one says, when it saves a
model, whether the result needs `compressors.load` or loads with stock transformers, and how
(`SavedCheckpoint`), which goes into the report and the model card. `compressors.load` tries
every format's `load` before falling back to transformers, so it stays the one public loader
for everything this project writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from compressors.methods import METHODS, import_object
from compressors.report.schema import CheckpointInfo

MAX_SHARD = "2GB"

PLAIN_HOW_TO_LOAD = (
    "Loads with `AutoModelForCausalLM.from_pretrained(path)` (`AutoModel` for encoders) or "
    "`compressors.load(path)`."
)
OUR_LOADER = ("Load it with `compressors.load(path)`: it holds layers or corrections that "
              "plain transformers does not know.")


PLAIN = CheckpointInfo(format="transformers", needs_compressors_load=False,
                       how_to_load=PLAIN_HOW_TO_LOAD)


@dataclass(frozen=True)
class CheckpointFormat:
    """A format: `save` returns what it wrote, or None when the model is not in this format;
    `load` returns the model, or None when the folder is not in this format."""

    name: str
    save: Callable[[nn.Module, Path], CheckpointInfo | None]
    load: Callable[[Path, torch.dtype | None], nn.Module | None]


@lru_cache(maxsize=1)
def formats() -> tuple[CheckpointFormat, ...]:
    """The methods' formats, imported on first use (they may need bitsandbytes); a format
    several methods write (compressed-tensors) is declared by each and listed once."""
    references = dict.fromkeys(ref for m in METHODS.values() for ref in m.formats)
    return tuple(import_object(ref) for ref in references)


def save_plain(model: nn.Module, folder: Path) -> CheckpointInfo:
    model.save_pretrained(folder, safe_serialization=True, max_shard_size=MAX_SHARD)
    return PLAIN


def save_any(model: nn.Module, folder: Path) -> CheckpointInfo:
    """Write `model` in the first format that takes it, else as a plain checkpoint."""
    for fmt in formats():
        info = fmt.save(model, folder)
        if info is not None:
            return info
    return save_plain(model, folder)


def load_special(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    for fmt in formats():
        model = fmt.load(folder, dtype)
        if model is not None:
            return model
    return None
