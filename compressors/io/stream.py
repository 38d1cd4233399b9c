"""Reading and writing a checkpoint's tensors a few at a time, for models larger than RAM.

`TensorSource` reads the tensors of a Hugging Face folder's safetensors shards by name prefix
(one transformer block at a time), opening only the shards that hold them, so nothing but the
asked-for tensors is ever resident. `ShardWriter` writes tensors as they are produced into
sharded safetensors plus the `model.safetensors.index.json` that `from_pretrained` reads:
shards get temporary names until the writer is closed, when their count is known and they are
renamed `model-0000i-of-0000N.safetensors`. Which files a folder's index may name, and reading
headers without torch, is `model_files`' business: every shard path here came from
`model_files.model_file`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from compressors.io.model_files import INDEX_FILE, SINGLE_FILE, shard_map


class TensorSource:
    """The tensors of one checkpoint folder, read by name when they are needed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = shard_map(folder)

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.files if name.startswith(prefix)]

    def load(self, names: Iterable[str], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """The named tensors, each converted to `dtype` (floating ones only) on `device`."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors: dict[str, Any] = {}
        for path, wanted in by_file.items():
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in wanted:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    tensors[name] = tensor.to(device)
        return tensors


class ShardWriter:
    """Sharded safetensors written tensor group by tensor group, indexed at `close`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def write(self, tensors: dict[str, Any]) -> None:
        """Write one group (e.g. a block's tensors) as one shard, now."""
        from safetensors.torch import save_file

        if not tensors:
            return
        path = self.folder / f".part-{len(self.parts):05d}.safetensors"
        contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
        save_file(contiguous, str(path), metadata={"format": "pt"})
        self.total_bytes += sum(t.numel() * t.element_size() for t in contiguous.values())
        self.parts.append((path, list(contiguous)))

    def close(self) -> list[Path]:
        """Give the shards their final names and write the index; returns the shard files."""
        count = len(self.parts)
        if count == 1:
            final = self.folder / SINGLE_FILE
            self.parts[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        files = []
        for number, (path, names) in enumerate(self.parts, start=1):
            final = self.folder / f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2), encoding="utf-8")
        return files
