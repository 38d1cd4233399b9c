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
from typing import Any

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


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a published folder, or None if it has none (not published)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def verify_manifest(folder: Path) -> bool:
    """True when every file the manifest lists is present with its size and sha256."""
    listed = read_manifest(folder)
    if listed is None:
        return False
    for name, entry in listed["files"].items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        if sha256_file(path) != entry["sha256"]:
            return False
    return True


def check_destination(destination: Path, overwrite: bool) -> None:
    """Fail before any work is done if publishing would clobber an artifact by accident."""
    if destination.exists() and not overwrite:
        raise FileExistsError(f"output folder {destination} exists; pass overwrite to replace it")


def discard_staging(destination: Path) -> None:
    """Remove what a run that died left beside `destination` (its staging folder, and a
    streamed run's pass shards inside it). Call only when no run of it is alive."""
    destination = destination.resolve()
    for stale in destination.parent.glob(f".{destination.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def staging_folder(destination: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh folder to fill; on clean exit it replaces `destination` atomically."""
    destination = destination.resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    check_destination(destination, overwrite)
    discard_staging(destination)
    staging = destination.parent / f".{destination.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        drop_remote_code_keys(staging)
        write_manifest(staging)
        _swap_into_place(staging, destination, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# Keys by which a config asks loaders to import Python shipped with the model. This project
# never runs such code (trust_remote_code is never on), and a published config must not invite
# a downstream user to: they are dropped from every JSON config before a checkpoint is published
# (and from uploads, `jobs.uploads`).
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")
CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json",
                "processor_config.json", "preprocessor_config.json")


def drop_remote_code_keys(folder: Path) -> None:
    """Remove `REMOTE_CODE_KEYS` from the folder's JSON configs (files that are not JSON are
    left to the loaders to refuse)."""
    for name in CONFIG_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(config, dict) and any(key in config for key in REMOTE_CODE_KEYS):
            for key in REMOTE_CODE_KEYS:
                config.pop(key, None)
            path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _swap_into_place(staging: Path, destination: Path, overwrite: bool) -> None:
    if not destination.exists():
        os.rename(staging, destination)
        return
    check_destination(destination, overwrite)
    retired = destination.parent / f".{destination.name}.retired-{uuid.uuid4().hex[:8]}"
    os.rename(destination, retired)
    os.rename(staging, destination)
    shutil.rmtree(retired, ignore_errors=True)
