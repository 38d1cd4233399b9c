"""Checkpoint formats beyond what `save_pretrained` / `from_pretrained` handle on their own.

A format module exposes `save(model, folder) -> bool` (True when it wrote the weights itself)
and `load(folder, dtype) -> nn.Module | None` (None when the folder is not in its format).
`model_io` tries every format listed here before falling back to plain transformers, so
`compressors.load` stays the one public loader for everything this project writes.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
from torch import nn


def _formats() -> list[ModuleType]:
    """Imported lazily: formats may depend on optional heavy modules (bitsandbytes)."""
    from compressors.lowrank import checkpoint as lowrank
    from compressors.quantization import checkpoint as quantized

    return [quantized, lowrank]


def save_special(model: nn.Module, folder: Path) -> bool:
    return any(fmt.save(model, folder) for fmt in _formats())


def load_special(folder: Path, dtype: torch.dtype | None) -> nn.Module | None:
    for fmt in _formats():
        model = fmt.load(folder, dtype)
        if model is not None:
            return model
    return None
