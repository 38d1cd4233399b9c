"""Reading and writing a checkpoint's tensors a few at a time, for models larger than RAM.

`TensorSource` reads the tensors of a Hugging Face folder's safetensors shards by name prefix
(one transformer block at a time), opening only the shards that hold them, so nothing but the
asked-for tensors is ever resident. `ShardWriter` writes tensors as they are produced into
sharded safetensors plus the `model.safetensors.index.json` that `from_pretrained` reads:
shards get temporary names until the writer is closed, when their count is known and they are
renamed `model-0000i-of-0000N.safetensors`. Headers are read with plain `json` (`header`), so
the memory estimate can size a model without torch.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def shard_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the index, or the single file)."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    single = folder / SINGLE_FILE
    if single.is_file():
        return dict.fromkeys(header(single), single)
    raise FileNotFoundError(f"{folder.name}: no {SINGLE_FILE} or {INDEX_FILE}")


class DamagedWeights(ValueError):
    """A weight file that is not what its name says (truncated, overwritten, another format)."""


_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def header(path: Path) -> dict[str, dict[str, Any]]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} from a safetensors file's header.

    Checked before it is trusted: the header is read before any library sees the file (the
    memory estimate runs first), so a damaged file must fail here with a plain reason.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 0 < length <= min(size - 8, _MAX_HEADER):
            raise DamagedWeights(f"{path.name}: not a safetensors file (its header length does "
                                 "not fit the file): the weight files look damaged or "
                                 "incomplete")
        try:
            entries = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            entries = None
    if not isinstance(entries, dict):
        raise DamagedWeights(f"{path.name}: the safetensors header is not a JSON table: the "
                             "weight files look damaged or incomplete")
    entries.pop("__metadata__", None)
    return entries


def tensor_sizes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, safetensors dtype)} of every tensor in a folder, from headers only."""
    sizes: dict[str, tuple[tuple[int, ...], str]] = {}
    for path in sorted(set(shard_files(folder).values())):
        for name, entry in header(path).items():
            sizes[name] = (tuple(entry["shape"]), entry["dtype"])
    return sizes


def dtype_bytes(name: str) -> int:
    return _DTYPE_BYTES[name]


class TensorSource:
    """The tensors of one checkpoint folder, read by name when they are needed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = shard_files(folder)

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
