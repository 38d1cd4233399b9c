"""The model registry a key sees: bundled models, the server's models folder, its own uploads.

A job names a model by registry name, or by absolute server path inside an allowed root
(`jobs.policy`). Nothing here imports torch: turning a bundled name into weights (SmolLM2 is
converted on first use) is left to the worker, which hands the name to the library. A key's
uploads are listed from what was recorded when each one completed (`jobs.upload_ledger`),
never by walking its folder.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from compressors.assets import BUNDLED_MODELS
from jobs.policy import allowed_model_path
from jobs.settings import Settings
from jobs.uploads import UploadSize

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class UnknownModel(ValueError):
    """The name is not in the registry this key sees, nor an allowed server path."""


class ModelEntry(BaseModel):
    """A model a key may name in a job."""

    name: str
    kind: Literal["bundled", "server", "uploaded"] = Field(
        description="shipped with the service, in MODELS_DIR, or uploaded by this key")
    owner: str | None = Field(None, description="the uploading key, for uploads")
    path: str | None = Field(None, description="server path, for models in MODELS_DIR")
    bytes: int | None = Field(None, description="unpacked size, for uploads")
    files: int | None = Field(None, description="number of files, for uploads")


def _is_model(path: Path) -> bool:
    """An HF folder or a GGUF file; a path the service may not read is no model (Python 3.11's
    `is_dir` raises on a folder without permission, or a name too long)."""
    try:
        return (path.is_dir() and (path / "config.json").is_file()) or (
            path.is_file() and path.suffix == ".gguf")
    except OSError:
        return False


def _named_models(root: Path | None) -> dict[str, Path]:
    if root is None or not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if NAME.match(p.name) and _is_model(p)}


def owner_uploads(settings: Settings, owner: str) -> Path:
    return settings.uploads_dir / owner


def uploaded_folders(settings: Settings, owner: str) -> dict[str, Path]:
    """The owner's upload folders by name, from disk (what the upload ledger rebuilds from)."""
    return _named_models(owner_uploads(settings, owner))


def list_models(settings: Settings, owner: str,
                uploads: Mapping[str, UploadSize]) -> list[ModelEntry]:
    """Everything `owner` may name in a job, with its kind; `uploads` is the owner's recorded
    uploads (`UploadLedger.stored`), so no upload folder is read here."""
    models = [ModelEntry(name=name, kind="bundled") for name in BUNDLED_MODELS]
    models += [ModelEntry(name=name, kind="server", path=str(path))
               for name, path in _named_models(settings.models_dir).items()]
    models += [ModelEntry(name=name, kind="uploaded", owner=owner, bytes=size.bytes,
                          files=size.files)
               for name, size in sorted(uploads.items())]
    return models


def resolve(settings: Settings, owner: str, spec: str) -> str:
    """What the worker should load for `spec`: a bundled name or an absolute local path."""
    if spec in BUNDLED_MODELS:
        return spec
    if NAME.match(spec):  # look the name up directly: no folder listing per submission
        for root in filter(None, [owner_uploads(settings, owner), settings.models_dir]):
            if _is_model(root / spec):
                return str((root / spec).resolve())
    path = allowed_model_path(settings, spec)
    if path is not None and _is_model(path):
        return str(path)
    raise UnknownModel(
        f"unknown model {spec!r}: not a bundled model ({', '.join(BUNDLED_MODELS)}), not one of "
        "your uploaded models, and not a model folder under an allowed server path; this "
        "service never downloads from a model hub"
    )


def delete_upload(settings: Settings, owner: str, name: str) -> bool:
    """Remove the owner's upload folder `name`; False if there is none (looked up by name, not
    by listing the owner's uploads)."""
    folder = owner_uploads(settings, owner) / name
    if not NAME.match(name) or not folder.is_dir() or not _is_model(folder):
        return False
    shutil.rmtree(folder)
    return True
