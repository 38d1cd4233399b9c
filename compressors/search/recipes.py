"""The recipes the search writes: an allocation as an ordinary recipe (what a user can
re-submit as is), and a recipe with the goal's recovery step inserted.

Each method writes its own step from an allocation (`SearchSpace.step`, read from the
registry); the step is validated there, as the method's config, before it is written here.
"""

from __future__ import annotations

from typing import Any

from compressors.methods import METHODS, PerpConfig, import_object, search_spaces
from compressors.search.allocate import Allocation
from compressors.search.goal import Goal


def write_step(allocation: Allocation) -> dict[str, Any] | None:
    """The allocation's recipe step, as written (only the fields the method set); None when
    it changes no layer."""
    config = import_object(search_spaces()[allocation.method].step)(allocation.choices)
    return None if config is None else config.model_dump(mode="json", exclude_unset=True)


def recipe_for(allocation: Allocation, goal: Goal, windows: int | None = None
               ) -> dict[str, Any] | None:
    """The ordinary recipe of an allocation, evaluated on `windows` (default: the goal's
    evaluation); None when it changes no layer."""
    step = write_step(allocation)
    if step is None:
        return None
    evaluation = goal.evaluation.model_dump(mode="json")
    if windows is not None:
        evaluation["windows"] = windows
    return {"steps": [step], "dtype": allocation.dtype,
            "calibration": goal.calibration.model_dump(mode="json"), "evaluation": evaluation}


def with_recovery(recipe: dict[str, Any], recovery: PerpConfig) -> dict[str, Any]:
    """`recipe` with the recovery step before its first quantizing step (quantized weights
    are final, so retraining comes first: it adapts the weights the quantizer then rounds, and
    after pruning it recovers the pruned ones), or last when nothing quantizes."""
    steps = list(recipe["steps"])
    at = next((i for i, step in enumerate(steps)
               if METHODS[step["method"]].stage == "quantizing"), len(steps))
    steps.insert(at, recovery.model_dump(mode="json"))
    return dict(recipe, steps=steps)


def with_full_evaluation(recipe: dict[str, Any], goal: Goal) -> dict[str, Any]:
    """`recipe` evaluated at the goal's full evaluation (the finals)."""
    return dict(recipe, evaluation=goal.evaluation.model_dump(mode="json"))
