"""Atomic publishing: a reader sees a complete artifact folder or none at all.

Everything is written into a hidden staging folder beside the destination, a sha256 manifest is
added last, and one `rename` moves it into place. A crash leaves only a staging folder, which
the next run of the same destination removes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, dict[str, int | str]]:
    files = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=2), encoding="utf-8")
    return files


def check_destination(destination: Path, overwrite: bool) -> None:
    """Fail before any work is done if publishing would clobber an artifact by accident."""
    if destination.exists() and not overwrite:
        raise FileExistsError(f"output folder {destination} exists; pass overwrite to replace it")


def _clear_stale_staging(destination: Path) -> None:
    for stale in destination.parent.glob(f".{destination.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staging_folder(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh folder to fill; on clean exit it replaces `destination` atomically."""
    destination = destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    check_destination(destination, overwrite)
    _clear_stale_staging(destination)
    staging = destination.parent / f".{destination.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        write_manifest(staging)
        _swap_into_place(staging, destination, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_into_place(staging: Path, destination: Path, overwrite: bool) -> None:
    if not destination.exists():
        os.rename(staging, destination)
        return
    check_destination(destination, overwrite)
    retired = destination.parent / f".{destination.name}.retired-{uuid.uuid4().hex[:8]}"
    os.rename(destination, retired)
    os.rename(staging, destination)
    shutil.rmtree(retired, ignore_errors=True)
