"""The artifact store: one folder per job under DATA_DIR/artifacts, published atomically.

The worker publishes through `compressors.publish` (staging folder + sha256 manifest + rename),
so a folder here is either complete or absent. This module locates, lists, streams and removes
them; reading and checking a manifest is the library's own code (one copy of its file names
and hashing). Nothing here imports torch, so the API and the RQ parent stay torch-free.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from compressors.publish import MANIFEST_FILE, discard_staging, read_manifest, verify_manifest
from compressors.report import REPORT_FILE
from compressors.safe_strings import can_name_a_file
from jobs.settings import Settings

__all__ = ["MANIFEST_FILE", "REPORT_FILE", "ArtifactFile", "artifact_dir", "list_files",
           "read_manifest", "remove", "safe_member", "stream_tar", "verify_manifest"]


class ArtifactFile(BaseModel):
    """One file of a published artifact, as its manifest lists it."""

    path: str = Field(description="relative to the artifact folder")
    bytes: int
    sha256: str | None = Field(None, description="none for the manifest itself")


def artifact_dir(settings: Settings, job_id: str) -> Path:
    return settings.artifacts_dir / job_id


def list_files(folder: Path) -> list[ArtifactFile]:
    """Files of a published artifact with size and checksum, from its manifest."""
    listed = read_manifest(folder) or {"files": {}}
    files = [ArtifactFile(path=name, bytes=entry["bytes"], sha256=entry["sha256"])
             for name, entry in listed["files"].items()]
    files.append(ArtifactFile(path=MANIFEST_FILE, bytes=(folder / MANIFEST_FILE).stat().st_size))
    return sorted(files, key=lambda f: f.path)


def safe_member(folder: Path, relative: str) -> Path | None:
    """The file `relative` inside `folder`, or None if it escapes it or is not a plain file.

    `relative` comes from a URL: a name the file system cannot look up (a NUL, a control or
    surrogate character, a part over NAME_MAX bytes) is None too, not the ValueError or
    ENAMETOOLONG that `resolve` and `is_file` would raise.
    """
    if not can_name_a_file(relative):
        return None
    root = folder.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or candidate == root:
        return None
    if not candidate.is_file() or (root / relative).is_symlink():
        return None
    return candidate


def stream_tar(folder: Path, arcname: str, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Yield a POSIX tar of `folder` header by header and chunk by chunk.

    Written by hand rather than through `tarfile.addfile`, which would buffer each whole file:
    memory stays at one chunk however large the checkpoint is.
    """
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        info = tarfile.TarInfo(f"{arcname}/{path.relative_to(folder)}")
        stat = path.stat()
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while block := handle.read(chunk):
                yield block
        padding = (-stat.st_size) % tarfile.BLOCKSIZE
        if padding:
            yield b"\0" * padding
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def discard_leftovers(settings: Settings, job_id: str) -> None:
    """A job's process is gone for good (cancelled, or failed with no retry left): remove the
    half-written staging folder it may have left; the published folder is never touched."""
    discard_staging(artifact_dir(settings, job_id))
