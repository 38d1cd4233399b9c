"""Every check of a submission that touches files, as one function with a typed answer.

A submission names a model and carries a recipe or a goal. Before it is queued: every text it
names passes the file policy (`jobs.policy`), the recipe's JSON stays under its size bound,
the model resolves to something this key may use (`jobs.model_registry`), the model folder
names only its own files (`compressors.io.model_files`), and admission finds no step that
would change nothing, need an LM head the model lacks, or fit no worker (`jobs.admission`).

These read the disk and parse what a user uploaded, so the API runs `check_submission` in a
child process with a deadline (`service.submission_checks`): its answer is plain data
(`Accepted` or `Refused`, each picklable), never an HTTP exception. HTTP-free and torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from compressors.io.model_files import DamagedWeights, UnsafeModelFile
from compressors.memory import Limits
from compressors.recipe import Recipe
from jobs import model_registry
from jobs.admission import admission_errors, goal_errors
from jobs.policy import recipe_violations
from jobs.settings import Settings

ErrorEntry = dict[str, Any]  # {"loc": [...], "msg": "...", "type": "..."}, the API's error item


@dataclass(frozen=True)
class Accepted:
    """A submission that may be queued: the validated recipe or goal (JSON, defaults filled
    in) and the path the worker will load."""

    model_path: str
    recipe: dict[str, Any] | None = None
    goal: dict[str, Any] | None = None


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


def check_submission(settings: Settings, owner: str, model: str, recipe: Recipe | None,
                     goal: dict[str, Any] | None, limits: Limits) -> Accepted | Refused:
    """Everything that would fail this submission, checked in the order a user fixes it:
    the recipe or goal itself, then the model, then the recipe against the model."""
    try:
        checked_goal = _validated_goal(settings, goal) if goal is not None else None
        recipe_json = _validated_recipe(settings, recipe) if recipe is not None else None
        model_path = _resolved_model(settings, owner, model)
        _admitted(model_path, recipe, checked_goal, limits)
    except _Refusal as refusal:
        return Refused(refusal.errors)
    return Accepted(model_path, recipe_json, checked_goal)


def _validated_recipe(settings: Settings, recipe: Recipe) -> dict[str, Any]:
    """The recipe's JSON if this server may run it: the file policy and the size bound."""
    violations = recipe_violations(settings, recipe)
    if violations:
        raise _Refusal([_entry(("recipe", *loc), msg) for loc, msg in violations])
    as_json = recipe.to_json_dict()
    size = len(json.dumps(as_json))
    if size > settings.max_recipe_bytes:
        raise _Refusal([_entry(("recipe",), f"the recipe is {size} bytes as JSON; the bound "
                                            f"is {settings.max_recipe_bytes} (MAX_RECIPE_BYTES)")])
    return as_json


def _validated_goal(settings: Settings, data: dict[str, Any]) -> dict[str, Any]:
    """The goal with defaults filled in; every text it names (sensitivity, calibration,
    evaluation, recovery) passes the same policy as a recipe's, walked the same way."""
    from compressors.search.goal import Goal

    try:
        goal = Goal.model_validate(data)
    except ValidationError as exc:
        raise _Refusal([_entry(("goal", *err["loc"]), err["msg"], err["type"])
                        for err in exc.errors(include_url=False,
                                              include_context=False)]) from None
    violations = recipe_violations(settings, goal)
    if violations:
        raise _Refusal([_entry(("goal", *loc), msg) for loc, msg in violations])
    return goal.to_json_dict()


def _resolved_model(settings: Settings, owner: str, spec: str) -> str:
    try:
        return model_registry.resolve(settings, owner, spec)
    except model_registry.UnknownModel as exc:
        raise _Refusal([_entry(("model",), str(exc))]) from None


def _admitted(model_path: str, recipe: Recipe | None, goal: dict[str, Any] | None,
              limits: Limits) -> None:
    """Refuse a job this model or no worker could run (see `jobs.admission`); a model folder
    that names files outside itself, or whose weights do not read, is refused naming
    `model`."""
    try:
        if recipe is not None:
            errors = [_entry(("recipe", *loc), msg)
                      for loc, msg in admission_errors(model_path, recipe, limits)]
        else:
            assert goal is not None
            errors = [_entry(("goal", *loc), msg)
                      for loc, msg in goal_errors(model_path, goal, limits)]
    except (UnsafeModelFile, DamagedWeights, FileNotFoundError) as exc:
        errors = [_entry(("model",), str(exc))]
    if errors:
        raise _Refusal(errors)
