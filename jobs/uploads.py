"""Unpacking an uploaded model archive (tar, tar.gz, zip) without trusting it.

Every member is checked before a byte is written: only regular files and folders, no absolute
paths, no `..`, no links or devices, and a cap on the total unpacked size (declared and actual).
Files are written by hand into a fresh folder, never with `extractall`. The result must look
like a Hugging Face folder with weights in safetensors (or `.bin`, which transformers reads with
`weights_only`), and is renamed into place only when complete.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from compressors.publish import CONFIG_FILES, drop_remote_code_keys

WEIGHT_SUFFIXES = (".safetensors", ".bin")


class UnsafeArchive(ValueError):
    """The archive is malformed, escapes its folder, holds links, or is too large."""


def _clean_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith("/"):
        raise UnsafeArchive(f"archive member {name!r} escapes the model folder")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchive(f"archive member {name!r} has an empty name")
    return PurePosixPath(*parts)


def _tar_members(archive: Path) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                path = _clean_name(member.name)
                if member.isdir():
                    yield path, 0, None
                elif member.isreg():
                    yield path, member.size, tar.extractfile(member)
                else:
                    raise UnsafeArchive(f"archive member {member.name!r} is a link or special file")
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"not a readable tar archive: {exc}") from None


def _zip_members(archive: Path) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = _clean_name(info.filename)
                kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when no Unix mode is recorded
                if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchive(
                        f"archive member {info.filename!r} is a link or special file")
                if info.is_dir():
                    yield path, 0, None
                else:
                    with zf.open(info) as handle:
                        yield path, info.file_size, handle
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"not a readable zip archive: {exc}") from None


def members(archive: Path) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    """(relative path, declared size, reader or None for folders) for each member."""
    if zipfile.is_zipfile(archive):
        return _zip_members(archive)
    return _tar_members(archive)


# What a damaged archive raises while a member is read (bad CRC, a directory that lies about
# sizes, a truncated gzip stream, an unsupported or encrypted zip member): all mean "malformed".
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError,
            NotImplementedError, RuntimeError)
# What listing the members of a damaged archive raises (disk errors of our own writes are not
# among them: those stay server errors).
_TRUNCATED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
              lzma.LZMAError)


def _copy_limited(reader: IO[bytes], target: Path, budget: int) -> int:
    written = 0
    with target.open("wb") as out:
        while block := _read(reader, target.name):
            written += len(block)
            if written > budget:
                raise UnsafeArchive("archive unpacks to more than the size limit")
            out.write(block)
    return written


def _read(reader: IO[bytes], name: str) -> bytes:
    try:
        return reader.read(1 << 20)
    except _DAMAGED as exc:
        reason = str(exc)[:120] or type(exc).__name__
        raise UnsafeArchive(f"archive member {name[:80]!r} is damaged or truncated "
                            f"({reason})") from None


def _single_top_folder(folder: Path) -> Path:
    """An archive of `mymodel/...` unpacks to its inner folder."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (folder / "config.json").exists():
        return entries[0]
    return folder


def check_model_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise UnsafeArchive("the archive holds no config.json (an HF model folder is expected)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        raise UnsafeArchive("the archive holds no .safetensors (or weights-only .bin) weights")


def strip_remote_code(folder: Path) -> None:
    """Remove the model's Python files and the remote-code keys of its JSON configs (the same
    keys `compressors.publish` drops from every published checkpoint); a config that is not
    JSON refuses the upload."""
    for path in folder.rglob("*.py"):
        path.unlink()
    for name in CONFIG_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise UnsafeArchive(f"{name} is not valid JSON") from None
    drop_remote_code_keys(folder)


@contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    scratch = parent / f".unpack-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def unpack_model(archive: Path, destination: Path, max_unpacked: int) -> Path:
    """Unpack `archive` into `destination` (which must not exist), atomically."""
    if destination.exists():
        raise FileExistsError(destination.name)
    with _scratch(destination.parent) as scratch:
        try:
            _unpack_into(scratch, archive, max_unpacked)
        except _TRUNCATED as exc:  # raised while listing the members of a damaged archive
            reason = str(exc)[:120] or type(exc).__name__
            raise UnsafeArchive(f"the archive is damaged or truncated ({reason})") from None
        folder = _single_top_folder(scratch)
        check_model_folder(folder)
        strip_remote_code(folder)
        folder.rename(destination)
    return destination


def _unpack_into(scratch: Path, archive: Path, max_unpacked: int) -> None:
    """Write every member of `archive` under `scratch`, checking each before a byte lands."""
    budget = max_unpacked
    for path, size, reader in members(archive):
        target = scratch / path
        if reader is None:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if size > budget:
            raise UnsafeArchive("archive unpacks to more than the size limit")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise UnsafeArchive(f"archive member {path} appears twice")
        budget -= _copy_limited(reader, target, budget)
