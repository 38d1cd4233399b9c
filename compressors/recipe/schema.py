"""A recipe: the ordered compression steps of one job, plus calibration and evaluation settings.

Validated at the edge (CLI, API) by pydantic; the `method` key selects the step type, unknown
keys anywhere are errors that name the key, and the order rules the registry declares
(what form of weights each step leaves, what each step accepts) are checked here, so a recipe
that could only fail or publish a broken checkpoint is refused before it runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressors.methods import METHODS
from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from compressors.recipe.text import Location

MAX_STEPS = 16

AnyStep = Annotated[
    Union[tuple(m.config for m in METHODS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="method"),
]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    steps: list[AnyStep] = Field(min_length=1, max_length=MAX_STEPS,
                                 description=f"compression steps, run in order (1-{MAX_STEPS})")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype the model is held in and published as; auto = the "
        "checkpoint's own (config.json); per-layer statistics accumulate in float32 whatever "
        "it is; the reference protocol is float32 on CPU")
    placement: Literal["auto", "in_memory", "onloaded", "streamed"] = Field(
        "auto", description="how the model is held: in_memory (all on the device), onloaded "
        "(in RAM, one block at a time on the device), streamed (each block read from and "
        "written to safetensors shards: models larger than RAM); auto = the memory estimate "
        "picks the first that fits")

    @model_validator(mode="after")
    def _order_rules(self) -> Recipe:
        """Each step must accept the form of weights the steps before it left."""
        form, made_by = "dense", None
        for index, step in enumerate(self.steps):
            method = METHODS[step.method]
            if form not in method.accepts:
                hint = METHODS[self.steps[made_by].method].leaves_hint if made_by is not None \
                    else None
                raise ValueError(
                    f"steps.{index} ({step.method}) cannot follow steps.{made_by} "
                    f"({self.steps[made_by].method}): that step leaves {form} weights and "
                    f"{step.method} takes only {'/'.join(sorted(method.accepts))} weights"
                    + (f"; {hint}" if hint else "")
                )
            after = step.weights_after()
            if after != form:
                form, made_by = after, index
        for index, step in enumerate(self.steps):
            message = step.placement_error(self.placement)
            if message:
                raise ValueError(f"placement: steps.{index} ({step.method}): {message}")
        if self.placement == "streamed":
            whole = [f"steps.{i} ({s.method})" for i, s in enumerate(self.steps)
                     if not METHODS[s.method].blockwise]
            if whole:
                raise ValueError(f"placement: streamed runs block by block, and {', '.join(whole)} "
                                 "needs the whole model at once; use placement auto or in_memory")
        return self

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def methods_used(self) -> list[str]:
        """Its steps' methods, in order (a job record lists them; a `Goal` answers the same)."""
        return [step.method for step in self.steps]

    def planned(self) -> list[PlannedRecipe]:
        """The recipes a job with this recipe runs, located in it: itself."""
        return [PlannedRecipe(self, (), tuple(("steps", i) for i in range(len(self.steps))))]

    def needs_causal_lm(self) -> list[tuple[Location, str]]:
        """(location, why) of every step whose settings need the model's next-token loss
        (`StepConfig.needs_causal_lm`); submission refuses them on a model without an LM head."""
        found: list[tuple[Location, str]] = []
        for index, step in enumerate(self.steps):
            need = step.needs_causal_lm()
            if need is not None:
                field, why = need
                found.append((("steps", index, field), why))
        return found


@dataclass(frozen=True)
class PlannedRecipe:
    """A recipe a job will run, and where the user wrote each part of it.

    A goal job runs recipes nobody wrote whole (its search writes a PERP recovery step with
    the goal's calibration); a check of such a recipe must still name a field of what was
    submitted. So each step carries its own location (`("steps", 2)` in a recipe,
    `("recovery",)` in a goal) and the checks need no rewriting of locations afterwards.
    """

    recipe: Recipe
    at: Location  # where the recipe's own errors point (the memory estimate)
    steps_at: tuple[Location, ...]  # where each step's errors point, in step order


def parse_recipe(data: dict[str, Any] | str | Path) -> Recipe:
    """From a dict, a JSON/YAML string, or a path to a `.json`/`.yaml` file."""
    if isinstance(data, dict):
        return Recipe.model_validate(data)
    text = str(data)
    path = Path(text)
    if "\n" not in text and len(text) < 4096 and path.suffix in {".json", ".yaml", ".yml"}:
        text = path.read_text(encoding="utf-8")
    loaded = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError("a recipe must be a mapping with a 'steps' list")
    return Recipe.model_validate(loaded)


def default_recipe() -> Recipe:
    """What `run` uses when no recipe is given: Wanda at 50%, the protocol's calibration."""
    return Recipe(steps=[{"method": "wanda", "sparsity": 0.5}])
