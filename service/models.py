"""The model registry a key sees: bundled models, the server's models folder, its own uploads.

A job may name a model by registry name, or by absolute server path inside an allowed root
(MODELS_DIR and MODEL_ROOTS); any other path is refused, so a key cannot make the service read
arbitrary folders. Nothing here imports torch: resolving the bundled SmolLM2 (which converts it
on first use) is left to the worker.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from service.settings import Settings

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class UnknownModel(ValueError):
    """The name is not in the registry this key sees, nor an allowed server path."""


def bundled_names() -> list[str]:
    from compressors.assets import MINILM_NAME, SMOLLM2_NAME

    return [SMOLLM2_NAME, MINILM_NAME]


def _is_model(path: Path) -> bool:
    return (path.is_dir() and (path / "config.json").is_file()) or (
        path.is_file() and path.suffix == ".gguf")


def _server_models(settings: Settings) -> dict[str, Path]:
    root = settings.models_dir
    if root is None or not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if NAME.match(p.name) and _is_model(p)}


def owner_uploads(settings: Settings, owner: str) -> Path:
    return settings.uploads_dir / owner


def _uploads(settings: Settings, owner: str) -> dict[str, Path]:
    root = owner_uploads(settings, owner)
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if NAME.match(p.name) and _is_model(p)}


def list_models(settings: Settings, owner: str) -> list[dict[str, Any]]:
    """Everything `owner` may name in a job, with its kind."""
    models = [{"name": n, "kind": "bundled", "owner": None} for n in bundled_names()]
    models += [{"name": n, "kind": "server", "owner": None, "path": str(p)}
               for n, p in _server_models(settings).items()]
    models += [{"name": n, "kind": "uploaded", "owner": owner, "bytes": _size(p)}
               for n, p in _uploads(settings, owner).items()]
    return models


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def resolve(settings: Settings, owner: str, spec: str) -> str:
    """What the worker should load for `spec`: a bundled name or an absolute local path."""
    if spec in bundled_names():
        return spec
    if NAME.match(spec):  # look the name up directly: no folder listing per submission
        roots = [owner_uploads(settings, owner), settings.models_dir]
        for root in filter(None, roots):
            if _is_model(root / spec):
                return str((root / spec).resolve())
    path = Path(spec)
    if path.is_absolute():
        real = path.resolve()
        allowed = any(real.is_relative_to(root) for root in settings.allowed_model_roots())
        if allowed and _is_model(real):
            return str(real)
    raise UnknownModel(
        f"unknown model {spec!r}: not a bundled model ({', '.join(bundled_names())}), not one of "
        "your uploaded models, and not a model folder under an allowed server path; this "
        "service never downloads from a model hub"
    )


def delete_upload(settings: Settings, owner: str, name: str) -> bool:
    folder = _uploads(settings, owner).get(name)
    if folder is None:
        return False
    shutil.rmtree(folder)
    return True
