"""Every path that comes out of a model folder, resolved by one function.

A model folder's files name other files: `model.safetensors.index.json`'s `weight_map` names
the shards, `tokenizer_config.json` may name tokenizer files (`fast_tokenizer_files`, any
`*_file` key), and any entry may be a symbolic link. For an uploaded model these are a user's
choices, and transformers and safetensors join them to the folder without asking where they
land: an index mapping every tensor to `../../<another key>/<their model>/model.safetensors`
once let one key read another's weights out of its own artifact. So nothing here, and nothing
a loader is handed, opens a file a model folder names unless `model_file` returned it:

- a reference is a relative path with no `..`, no absolute or drive prefix, no NUL or control
  characters, no backslashes;
- joined to the folder and resolved (links followed), it must stay inside the folder;
- it must be a regular file (not a FIFO such as `/proc/self/fd/<n>` of the API process, a
  device or a folder), checked with `stat` before anything opens it.

A refusal says the same thing whether or not something exists where the reference points
outside the folder (nothing outside is ever opened, and the message never quotes what such a
file holds). `check_model_folder` vets everything a loader will follow (config, every shard an
index names, tokenizer file references, every link and special file in the folder) and runs
before a model is handed to transformers (in memory, onloaded, streamed), at submission, and
in the memory estimate. JSON files are read with a byte bound, so a hostile config cannot make
a reader hold gigabytes.

Torch-free: the API runs all of this at submission.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_CONFIG = "tokenizer_config.json"
MAX_JSON_BYTES = 32 * 1024**2  # an index of 100k tensors is a few MB
MAX_FOLDER_ENTRIES = 10_000  # an HF model folder holds tens of files
MAX_REFERENCE_LENGTH = 512


class UnsafeModelFile(ValueError):
    """A model folder names a file outside itself, or something that is not a regular file."""


def _refused(what: str, reference: str) -> UnsafeModelFile:
    shown = reference[:80].encode("unicode_escape").decode("ascii")
    return UnsafeModelFile(f"{what} {shown!r} is not a regular file inside the model folder; "
                           "a model may only name its own files")


def _lexically_relative(reference: str) -> bool:
    """A plain relative path: no way out of the folder before any link is followed."""
    if not reference or len(reference) > MAX_REFERENCE_LENGTH or "\\" in reference:
        return False
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in reference):
        return False
    try:
        reference.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    path = PurePosixPath(reference)
    return not path.is_absolute() and ".." not in path.parts and ":" not in path.parts[0]


def model_file(folder: Path, reference: str, what: str = "file") -> Path:
    """The regular file `reference` names inside `folder` (links resolved), or
    `UnsafeModelFile`; `FileNotFoundError` only for a plain name inside the folder that does
    not exist. `what` names the reference in the message (e.g. "the index's shard")."""
    if not isinstance(reference, str) or not _lexically_relative(reference):
        raise _refused(what, str(reference))
    root = folder.resolve()
    real = (root / reference).resolve()
    if not real.is_relative_to(root) or real == root:
        raise _refused(what, reference)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        if (root / reference).is_symlink():  # a dangling link: say nothing of its target
            raise _refused(what, reference) from None
        raise FileNotFoundError(f"{what} {reference[:80]!r} is missing from the model "
                                "folder") from None
    if not stat.S_ISREG(mode):
        raise _refused(what, reference)
    return real


def optional_file(folder: Path, name: str, what: str = "file") -> Path | None:
    """`model_file` for a file a folder may or may not have; None when it has no such entry."""
    if not _lexically_relative(name):
        raise _refused(what, name)
    if not os.path.lexists(folder / name):
        return None
    return model_file(folder, name, what)


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file returned by `model_file`, read with a byte bound (a hostile config cannot
    make the reader hold gigabytes)."""
    with path.open("rb") as handle:
        raw = handle.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise UnsafeModelFile(f"{path.name} is larger than {max_bytes} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UnsafeModelFile(f"{path.name} is not valid JSON") from None


def model_json(folder: Path, name: str) -> dict[str, Any]:
    """A JSON object file of the folder (config.json, an index, a tokenizer config)."""
    value = read_json(model_file(folder, name))
    if not isinstance(value, dict):
        raise UnsafeModelFile(f"{name} is not a JSON object")
    return value


def model_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json."""
    return model_json(folder, CONFIG_FILE)


def shard_map(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it, every path through `model_file`:
    from the index when there is one, else the single file."""
    if os.path.lexists(folder / INDEX_FILE):
        return indexed_files(folder, INDEX_FILE)
    single = optional_file(folder, SINGLE_FILE)
    if single is not None:
        return dict.fromkeys(header(single), single)
    raise FileNotFoundError(f"{folder.name}: no {SINGLE_FILE} or {INDEX_FILE}")


def indexed_files(folder: Path, index_name: str) -> dict[str, Path]:
    """An index's `weight_map` with each shard resolved once through `model_file`."""
    weight_map = model_json(folder, index_name).get("weight_map")
    if not isinstance(weight_map, dict):
        raise UnsafeModelFile(f"{index_name} has no weight_map table")
    resolved: dict[str, Path] = {}
    files: dict[Any, Path] = {}
    for name, reference in weight_map.items():
        if reference not in files:
            files[reference] = model_file(folder, reference, f"{index_name}'s shard")
        resolved[name] = files[reference]
    return resolved


def _followed_tokenizer_files(config: dict[str, Any]) -> list[Any]:
    """The file names in a tokenizer config that transformers joins to the folder and opens:
    `fast_tokenizer_files` (one tokenizer.json per library version). Its other `*_file` keys
    (`tokenizer_file`, `vocab_file`, ..., often stale absolute paths written by old versions)
    are overridden by the files transformers finds under their standard names, never opened;
    tests/test_model_files.py proves it by watching every open, and uploads drop them."""
    names = config.get("fast_tokenizer_files") or []
    return names if isinstance(names, list) else [names]


def _entries(folder: Path) -> Iterator[Path]:
    """Every entry under the folder, links not followed, at most MAX_FOLDER_ENTRIES."""
    count = 0
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise UnsafeModelFile(f"the model folder holds more than {MAX_FOLDER_ENTRIES} "
                                      "entries")
            yield Path(parent) / name


def check_model_folder(folder: Path) -> None:
    """Vet everything a loader of this folder may open, before any loader runs: config.json,
    every entry of the folder (a link may point anywhere; a FIFO blocks its reader), every
    shard a `*.index.json` names, and the tokenizer files its config names. Raises
    `UnsafeModelFile` (or `FileNotFoundError` for a missing file inside the folder)."""
    model_file(folder, CONFIG_FILE)
    root = folder.resolve()
    for entry in _entries(folder):
        relative = entry.relative_to(folder).as_posix()
        if entry.is_dir():
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                raise _refused("folder", relative)
            continue
        model_file(folder, relative)
        if entry.parent == folder and entry.name.endswith(".index.json"):
            indexed_files(folder, entry.name)
    if os.path.lexists(folder / TOKENIZER_CONFIG):
        for reference in _followed_tokenizer_files(model_json(folder, TOKENIZER_CONFIG)):
            with contextlib.suppress(FileNotFoundError):  # listed, not shipped: not followed
                model_file(folder, reference, f"{TOKENIZER_CONFIG}'s fast_tokenizer_files")


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
                "F8_E8M0": 1, "C64": 8}


class DamagedWeights(ValueError):
    """A weight file that is not what its name says (truncated, overwritten, another format)."""


_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def header(path: Path, max_bytes: int = _MAX_HEADER) -> dict[str, dict[str, Any]]:
    """{tensor name: {"dtype", "shape", "data_offsets"}} from a safetensors file's header.

    Checked before it is trusted: the header is read before any library sees the file (the
    memory estimate runs first), so a damaged file must fail here with a plain reason. A
    header longer than `max_bytes` is refused unread (one may claim terabytes). The returned
    table is shared (cached): read it, never change it.
    """
    return _header_and_length(path, max_bytes)[0]


def _header_and_length(path: Path, max_bytes: int) -> tuple[dict[str, dict[str, Any]], int]:
    """The header and its length in bytes, parsed once per file version: a model of many
    experts has megabytes of header, which admission, the estimate and the loader all read."""
    info = path.stat()
    return _parsed_header(str(path), info.st_mtime_ns, info.st_size, info.st_ino, max_bytes)


@functools.lru_cache(maxsize=32)
def _parsed_header(path_text: str, _mtime_ns: int, size: int, _inode: int,
                   max_bytes: int) -> tuple[dict[str, dict[str, Any]], int]:
    path = Path(path_text)
    with path.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if length > max_bytes and length <= size - 8:
            raise UnsafeModelFile(f"{path.name}: its safetensors header is longer than "
                                  f"{max_bytes} bytes")
        if not 0 < length <= min(size - 8, max_bytes):
            raise DamagedWeights(f"{path.name}: not a safetensors file (its header length does "
                                 "not fit the file): the weight files look damaged or "
                                 "incomplete")
        try:
            entries = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            entries = None
    if not isinstance(entries, dict):
        raise DamagedWeights(f"{path.name}: the safetensors header is not a JSON table: the "
                             "weight files look damaged or incomplete")
    entries.pop("__metadata__", None)
    if not all(_plausible_entry(entry) for entry in entries.values()):
        raise DamagedWeights(f"{path.name}: the safetensors header lists a tensor without a "
                             "known dtype and shape: the weight files look damaged")
    return entries, length


def _plausible_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"]))


def tensor_sizes(folder: Path, max_header_bytes: int = _MAX_HEADER,
                 ) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, safetensors dtype)} of every tensor in a folder, from headers only;
    `max_header_bytes` bounds the headers of all shards together."""
    sizes: dict[str, tuple[tuple[int, ...], str]] = {}
    budget = max_header_bytes
    for path in sorted(set(shard_map(folder).values())):
        if budget <= 0:
            raise UnsafeModelFile(f"the model's safetensors headers are longer than "
                                  f"{max_header_bytes} bytes together")
        entries, length = _header_and_length(path, budget)
        budget -= length
        for name, entry in entries.items():
            sizes[name] = (tuple(entry["shape"]), entry["dtype"])
    return sizes


def dtype_bytes(name: str) -> int:
    return _DTYPE_BYTES[name]
