"""The model registry a key sees: bundled models, the server's models folder, its own uploads.

A job names a model by registry name, or by absolute server path inside an allowed root
(`jobs.policy`). Nothing here imports torch: turning a bundled name into weights (SmolLM2 is
converted on first use) is left to the worker, which hands the name to the library.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from compressors.assets import BUNDLED_MODELS
from jobs.policy import allowed_model_path
from jobs.settings import Settings

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


def _is_model(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").is_file()) or (
        path.is_file() and path.suffix == ".gguf")


def _named_models(root: Path | None) -> dict[str, Path]:
    if root is None or not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if NAME.match(p.name) and _is_model(p)}


def owner_uploads(settings: Settings, owner: str) -> Path:
    return settings.uploads_dir / owner


def list_models(settings: Settings, owner: str) -> list[ModelEntry]:
    """Everything `owner` may name in a job, with its kind."""
    models = [ModelEntry(name=name, kind="bundled") for name in BUNDLED_MODELS]
    models += [ModelEntry(name=name, kind="server", path=str(path))
               for name, path in _named_models(settings.models_dir).items()]
    models += [ModelEntry(name=name, kind="uploaded", owner=owner, bytes=_size(path))
               for name, path in _named_models(owner_uploads(settings, owner)).items()]
    return models


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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
    folder = _named_models(owner_uploads(settings, owner)).get(name)
    if folder is None:
        return False
    shutil.rmtree(folder)
    return True
