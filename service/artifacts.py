"""The artifact store: one folder per job under DATA_DIR/artifacts, published atomically.

The worker publishes through `compressors.publish` (staging folder + sha256 manifest + rename),
so a folder here is either complete or absent. This module only locates, verifies, lists and
streams them; it imports nothing heavy so the API and the RQ parent stay torch-free.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from service.settings import Settings

MANIFEST = "manifest.json"
REPORT = "compression_report.json"


def artifact_dir(settings: Settings, job_id: str) -> Path:
    return settings.artifacts_dir / job_id


def manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path) -> bool:
    """True when every file the manifest lists is present with its size and sha256."""
    listed = manifest(folder)
    if listed is None:
        return False
    for name, entry in listed["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        if _sha256(path) != entry["sha256"]:
            return False
    return True


def list_files(folder: Path) -> list[dict[str, Any]]:
    """Files of a published artifact with size and checksum, from its manifest."""
    listed = manifest(folder) or {"files": {}}
    files = [{"path": name, **entry} for name, entry in listed["files"].items()]
    files.append({"path": MANIFEST, "bytes": (folder / MANIFEST).stat().st_size, "sha256": None})
    return sorted(files, key=lambda f: f["path"])


def safe_member(folder: Path, relative: str) -> Path | None:
    """The file `relative` inside `folder`, or None if it escapes it or is not a plain file."""
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
