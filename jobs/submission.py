"""Every check of a submission that touches files, as one function with a typed answer.

A submission names a model and carries a recipe or a goal. Before it is queued: every text it
names passes the file policy (`jobs.policy`), its JSON stays under the size bound,
the model resolves to something this key may use (`jobs.model_registry`), the model folder
names only its own files (`compressors.io.model_files`), and admission finds no step that
would change nothing, need an LM head the model lacks, or fit no worker (`jobs.admission`).

These read the disk and parse what a user uploaded, so the API runs `check_submission` in a
child process with a deadline (`service.submission_checks`): its answer is plain data
(`Accepted` or `Refused`, each picklable), never an HTTP exception. HTTP-free and torch-free.

The recipe or goal arrives validated (the API's body types are the library's `Recipe` and
`Goal`, so pydantic's 422 names a bad field before any check here runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from compressors.io.model_files import DamagedWeights, UnsafeModelFile
from compressors.memory import Limits
from compressors.search.goal import Goal
from jobs import model_registry
from jobs.admission import admission_errors
from jobs.policy import recipe_violations
from jobs.settings import Settings
from jobs.spec import JobSpec, body_field, record_fields

ErrorEntry = dict[str, Any]  # {"loc": [...], "msg": "...", "type": "..."}, the API's error item


@dataclass(frozen=True)
class Accepted:
    """A submission that may be queued: the path the worker will load, and the recipe and
    goal as the job record keeps them (`jobs.spec.record_fields`)."""

    model_path: str
    recipe: dict[str, Any] = field(default_factory=dict)
    goal: Goal | None = None


@dataclass(frozen=True)
class Refused:
    """A submission that may not: each entry names the offending field from the body down."""

    errors: list[ErrorEntry] = field(default_factory=list)


class _Refusal(Exception):
    def __init__(self, errors: list[ErrorEntry]) -> None:
        super().__init__(errors)
        self.errors = errors


def _entry(loc: tuple[Any, ...], msg: str, kind: str = "value_error") -> ErrorEntry:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def check_submission(settings: Settings, owner: str, model: str, spec: JobSpec,
                     limits: Limits) -> Accepted | Refused:
    """Everything that would fail this submission, checked in the order a user fixes it:
    the recipe or goal itself, then the model, then the recipe or goal against the model.
    One path for both: each check asks the spec, and its errors name the field it came in."""
    where = body_field(spec)
    try:
        _storable(settings, where, spec)
        model_path = _resolved_model(settings, owner, model)
        _admitted(where, model_path, spec, limits)
    except _Refusal as refusal:
        return Refused(refusal.errors)
    return Accepted(model_path, *record_fields(spec))


def _storable(settings: Settings, where: str, spec: JobSpec) -> None:
    """This server may run it and store it: every text it names passes the file policy
    (walked the same way in a recipe and a goal), and its JSON stays under the size bound."""
    violations = recipe_violations(settings, spec)
    if violations:
        raise _Refusal([_entry((where, *loc), msg) for loc, msg in violations])
    size = len(json.dumps(spec.to_json_dict()))
    if size > settings.max_recipe_bytes:
        raise _Refusal([_entry((where,), f"the {where} is {size} bytes as JSON; the bound is "
                                         f"{settings.max_recipe_bytes} (MAX_RECIPE_BYTES)")])


def _resolved_model(settings: Settings, owner: str, spec: str) -> str:
    try:
        return model_registry.resolve(settings, owner, spec)
    except model_registry.UnknownModel as exc:
        raise _Refusal([_entry(("model",), str(exc))]) from None


def _admitted(where: str, model_path: str, spec: JobSpec, limits: Limits) -> None:
    """Refuse a job this model or no worker could run (see `jobs.admission`); a model folder
    that names files outside itself, or whose weights do not read, is refused naming
    `model`."""
    try:
        errors = [_entry((where, *loc), msg)
                  for loc, msg in admission_errors(model_path, spec, limits)]
    except (UnsafeModelFile, DamagedWeights, FileNotFoundError) as exc:
        errors = [_entry(("model",), str(exc))]
    if errors:
        raise _Refusal(errors)
