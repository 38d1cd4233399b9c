"""A recipe: the ordered compression steps of one job, plus calibration and evaluation settings.

Validated at the edge (CLI, API) by pydantic; the `method` key selects the step type, and unknown
keys anywhere are errors that name the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field

from compressors.protocol import CalibrationConfig, EvaluationConfig
from compressors.registry import METHODS

AnyStep = Annotated[
    Union[tuple(m.config for m in METHODS.values())],  # noqa: UP007 - built from the registry
    Field(discriminator="method"),
]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[AnyStep] = Field(min_length=1, description="compression steps, run in order")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


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
