"""Unpacking an uploaded model archive (tar, tar.gz, zip) without trusting it.

Every member is checked before a byte is written: only regular files and folders, no absolute
paths, no `..`, no links or devices, a cap on the total unpacked size (declared and actual) and
one on the number of members, counted while the members are listed (a zip's end record is read
first, so not even its directory is parsed past the cap): a 1 MB archive of 100,000 empty files
is refused before it costs 100,000 files on disk and a walk of them on every listing. Files are
written by hand into a fresh folder, never with `extractall`. The result must look like a
Hugging Face folder with weights in safetensors (or `.bin`, which transformers reads with
`weights_only`), is measured (`UploadSize`, what the key's quota counts), offered to the
caller's `admit` check, and renamed into place only when complete and admitted.
"""

from __future__ import annotations

import gzip
import json
import lzma
import shutil
import stat
import struct
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from pydantic import BaseModel, Field

from compressors.io import model_files
from compressors.publish import CONFIG_FILES, drop_remote_code_keys

WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Most central-directory bytes a zip may spend per member it may hold: a record is 46 bytes
# plus its name, extra field and comment. Checked before `zipfile` parses the directory.
ZIP_DIRECTORY_BYTES_PER_MEMBER = 4096


class UnsafeArchive(ValueError):
    """The archive is malformed, escapes its folder, holds links, or is too large."""


class ArchiveTooLarge(UnsafeArchive):
    """Over one of the caps on a single archive: its member count or its unpacked bytes.

    Apart from `UnsafeArchive` because the answer differs: the archive is fine, only too big
    (413 naming the cap, or 429 when the cap was what is left of the key's quota).
    """

    def __init__(self, what: Literal["members", "bytes"], limit: int) -> None:
        self.what, self.limit = what, limit
        super().__init__(f"the archive holds more than {limit} files and folders"
                         if what == "members" else f"the archive unpacks to more than {limit} "
                         "bytes")


class UploadSize(BaseModel):
    """What one unpacked upload stores: the quota counts it, GET /models shows it."""

    bytes: int = Field(ge=0, description="unpacked size of the model's files")
    files: int = Field(ge=0, description="number of files")


def measure(folder: Path) -> UploadSize:
    """The size of an upload's folder (one walk: at upload time, or when Redis lost it)."""
    sizes = [path.stat().st_size for path in folder.rglob("*") if path.is_file()]
    return UploadSize(bytes=sum(sizes), files=len(sizes))


def _clean_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith("/"):
        raise UnsafeArchive(f"archive member {name!r} escapes the model folder")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise UnsafeArchive(f"archive member {name!r} has an empty name")
    return PurePosixPath(*parts)


def _tar_members(archive: Path, max_members: int
                 ) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):  # headers are read one at a time
                if count > max_members:
                    raise ArchiveTooLarge("members", max_members)
                path = _clean_name(member.name)
                if member.isdir():
                    yield path, 0, None
                elif member.isreg():
                    yield path, member.size, tar.extractfile(member)
                else:
                    raise UnsafeArchive(f"archive member {member.name!r} is a link or special file")
    except tarfile.TarError as exc:
        raise UnsafeArchive(f"not a readable tar archive: {exc}") from None


def _zip_members(archive: Path, max_members: int
                 ) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    entries, directory_bytes = _zip_directory(archive)
    if entries > max_members:
        raise ArchiveTooLarge("members", max_members)
    if directory_bytes > max_members * ZIP_DIRECTORY_BYTES_PER_MEMBER:
        raise ArchiveTooLarge("members", max_members)  # a directory too long for its count
    try:
        with zipfile.ZipFile(archive) as zf:
            if len(zf.infolist()) > max_members:  # the end record's count was a lie
                raise ArchiveTooLarge("members", max_members)
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


def _zip_directory(archive: Path) -> tuple[int, int]:
    """(members, central-directory bytes) as a zip's end record declares them, read before
    `zipfile` parses (and holds in memory) the whole directory, however long it is."""
    with archive.open("rb") as handle:
        end = handle.seek(0, 2)
        tail_start = max(0, end - 22 - 65535)  # the record, and a comment of at most 64 KiB
        handle.seek(tail_start)
        tail = handle.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise UnsafeArchive("not a readable zip archive: no end of central directory")
        entries, directory_bytes = struct.unpack_from("<HI", tail, at + 10)
        if entries != 0xFFFF and directory_bytes != 0xFFFFFFFF:
            return entries, directory_bytes
        # Zip64: a locator just before the record points at the 64-bit record.
        locator = at - 20
        if locator < 0 or tail[locator:locator + 4] != b"PK\x06\x07":
            raise UnsafeArchive("not a readable zip archive: a zip64 record is missing")
        (offset,) = struct.unpack_from("<Q", tail, locator + 8)
        handle.seek(offset)
        record = handle.read(56)
    if len(record) < 56 or record[:4] != b"PK\x06\x06":
        raise UnsafeArchive("not a readable zip archive: a zip64 record is damaged")
    entries64, directory64 = struct.unpack_from("<QQ", record, 32)
    return entries64, directory64


def members(archive: Path, max_members: int
            ) -> Iterator[tuple[PurePosixPath, int, IO[bytes] | None]]:
    """(relative path, declared size, reader or None for folders) for each member; past
    `max_members` members, `ArchiveTooLarge` before the next one is read."""
    if zipfile.is_zipfile(archive):
        return _zip_members(archive, max_members)
    return _tar_members(archive, max_members)


# What a damaged archive raises while a member is read (bad CRC, a directory that lies about
# sizes, a truncated gzip stream, an unsupported or encrypted zip member): all mean "malformed".
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError,
            NotImplementedError, RuntimeError)
# What listing the members of a damaged archive raises (disk errors of our own writes are not
# among them: those stay server errors).
_TRUNCATED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
              lzma.LZMAError)


def _copy_limited(reader: IO[bytes], target: Path, budget: int, limit: int) -> int:
    written = 0
    with target.open("wb") as out:
        while block := _read(reader, target.name):
            written += len(block)
            if written > budget:
                raise ArchiveTooLarge("bytes", limit)
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
    """An HF model folder whose files name only each other (`compressors.io.model_files`,
    the same check every loader makes) and whose safetensors headers read: refused now, with
    the reason, rather than when a job first loads it."""
    if not (folder / "config.json").is_file():
        raise UnsafeArchive("the archive holds no config.json (an HF model folder is expected)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        raise UnsafeArchive("the archive holds no .safetensors (or weights-only .bin) weights")
    try:
        model_files.check_model_folder(folder)
        if any(p.suffix == ".safetensors" for p in folder.iterdir()):
            model_files.tensor_sizes(folder)
    except (model_files.UnsafeModelFile, model_files.DamagedWeights,
            FileNotFoundError) as exc:
        raise UnsafeArchive(str(exc)) from None


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


def unpack_model(archive: Path, destination: Path, max_unpacked: int, max_members: int,
                 admit: Callable[[UploadSize], None] | None = None) -> UploadSize:
    """Unpack `archive` into `destination` (which must not exist), atomically.

    `admit` sees the finished upload's size just before the rename into place and may refuse
    it by raising (the key's quota, checked then so two concurrent uploads cannot both fit
    in what only one does); the scratch folder is removed either way.
    """
    if destination.exists():
        raise FileExistsError(destination.name)
    with _scratch(destination.parent) as scratch:
        try:
            _unpack_into(scratch, archive, max_unpacked, max_members)
        except _TRUNCATED as exc:  # raised while listing the members of a damaged archive
            reason = str(exc)[:120] or type(exc).__name__
            raise UnsafeArchive(f"the archive is damaged or truncated ({reason})") from None
        folder = _single_top_folder(scratch)
        check_model_folder(folder)
        strip_remote_code(folder)
        size = measure(folder)
        if admit is not None:
            admit(size)
        folder.rename(destination)
    return size


def _unpack_into(scratch: Path, archive: Path, max_unpacked: int, max_members: int) -> None:
    """Write every member of `archive` under `scratch`, checking each before a byte lands."""
    budget = max_unpacked
    for path, size, reader in members(archive, max_members):
        target = scratch / path
        if reader is None:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if size > budget:
            raise ArchiveTooLarge("bytes", max_unpacked)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise UnsafeArchive(f"archive member {path} appears twice")
        budget -= _copy_limited(reader, target, budget, max_unpacked)
