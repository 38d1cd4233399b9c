"""What a job may name on this server: model folders and text files inside allowed folders.

A job may name a model by registry name or by absolute server path, and a recipe may name text
files; a path counts only inside the allowed roots (MODELS_DIR and MODEL_ROOTS), so a key cannot
make the service read /etc or another team's folders. The service's own DATA_DIR (API-key
files, every owner's uploads, Redis's files, artifacts) is refused even when an allowed root
contains it: uploads are named by registry name, which resolves to the caller's own folder
only. The API applies this at submission (a 422 naming each field); the worker checks it again,
and hands the same roots to `compressors.compress`, which checks the recipe before it reads
anything (defence in depth: a record written by other means, or settings changed since, cannot
widen what a job reads).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from compressors.recipe.text import Location, text_policy_violations
from compressors.safe_strings import can_name_a_file
from jobs.settings import Settings


def is_inside(path: Path, roots: list[Path]) -> bool:
    """True when `path`, links resolved, lies inside one of `roots` (already resolved)."""
    real = path.resolve()
    return any(real.is_relative_to(root) for root in roots)


def denied_roots(settings: Settings) -> list[Path]:
    """Folders no job may name by path, whatever the allowed roots say."""
    return [settings.data_dir.resolve()]


def allowed_model_path(settings: Settings, spec: str) -> Path | None:
    """The resolved server path `spec` names, if it is absolute, inside an allowed root and
    outside the service's own data. A spec the file system cannot look up (a NUL, a part over
    NAME_MAX bytes) names nothing: None, rather than the error `resolve` or `stat` raise."""
    if not can_name_a_file(spec):
        return None
    path = Path(spec)
    if not path.is_absolute() or not is_inside(path, settings.allowed_model_roots()):
        return None
    if is_inside(path, denied_roots(settings)):
        return None
    return path.resolve()


def text_roots(settings: Settings) -> list[Path]:
    """Folders whose files a recipe may name as texts (the worker passes them to the library)."""
    return settings.allowed_model_roots()


def recipe_violations(settings: Settings, recipe: BaseModel) -> list[tuple[Location, str]]:
    """(location, message) of every field naming a file jobs may not read, in a recipe or in
    anything else a job carries (a search goal): every text field is a `TextRef`."""
    return text_policy_violations(recipe, text_roots(settings), denied_roots(settings))


def model_source_allowed(settings: Settings, owner: str, source: str) -> bool:
    """What the worker checks before loading a record's model (defence in depth): a bundled
    name, the owner's own upload folder, or an allowed server path outside DATA_DIR."""
    from compressors.assets import BUNDLED_MODELS

    if source in BUNDLED_MODELS:
        return True
    if not can_name_a_file(source):
        return False
    path = Path(source)
    if not path.is_absolute():
        return False
    if is_inside(path, [(settings.uploads_dir / owner).resolve()]):
        return True
    return allowed_model_path(settings, source) is not None
