"""A job's goal: what to optimise and under which budget, instead of a recipe (torch-free).

Validated at the edge like a recipe (strict, unknown keys are errors naming the key), so the
API answers 422 naming the field before anything is queued. The methods a goal may name are
the registry's searchable ones (`methods.search_spaces`: each declares its `SearchSpace` in its
own config), so this module names none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from compressors.methods import PerpConfig, search_spaces
from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from compressors.recipe.schema import PlannedRecipe, Recipe
from compressors.recipe.text import Location

Objective = Literal["size_bytes", "perplexity", "latency_ms"]
SearchDtype = Literal["float32", "bfloat16"]
SEARCHABLE = tuple(search_spaces())


class Goal(BaseModel):
    """`minimize` one metric subject to budgets on the others.

    Perplexity budgets are ratios to the dense model on the same evaluation windows (the
    search measures the dense model itself); size budgets are bytes of stored weights, or a
    ratio to the original checkpoint's weight files.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    minimize: Objective = Field("size_bytes", description="the metric to make smallest")
    max_perplexity_ratio: float | None = Field(
        None, gt=1.0, le=100.0,
        description="perplexity at most this times the dense model's, in (1, 100]")
    max_size_bytes: int | None = Field(
        None, ge=1, le=2**50, description="stored weight bytes at most this, in [1, 2^50]")
    max_size_ratio: float | None = Field(
        None, gt=0.0, le=1.0,
        description="stored weight bytes at most this fraction of the original's, in (0, 1]")
    methods: list[str] = Field(
        default_factory=lambda: ["quantize"], min_length=1, max_length=len(SEARCHABLE),
        description=f"methods the search may use: {', '.join(SEARCHABLE)}")
    dtypes: list[SearchDtype] = Field(
        default_factory=lambda: ["float32", "bfloat16"], min_length=1, max_length=2,
        description="dtypes the published model may be held in (the layers left dense, the "
        "embeddings and norms are stored in it)")
    budget_minutes: float = Field(
        120.0, gt=0.0, le=10080.0,
        description="wall-time budget; verification stops starting candidates past it")
    candidates: int = Field(3, ge=1, le=16, description="allocations verified, in [1, 16]")
    refine: bool = Field(
        True, description="after the first verifications, rescale the predictions by what was "
        "measured and verify the re-allocated choice once more")
    finalists: int = Field(
        2, ge=1, le=8,
        description="minimizing perplexity or latency: this many of the best verified "
        "candidates run again at the full evaluation and the best measured there is "
        "published (a few verification windows rank near-equal candidates unreliably); "
        "in [1, 8]")
    recovery: PerpConfig | None = Field(
        None,
        description="a PERP step the search may add before the quantizing step of its best "
        "candidates (minimizing perplexity or latency: the finalists; minimizing size: the "
        "smaller candidates that missed the perplexity budget), verified like any other; "
        "{} = PERP's defaults; null = never retrain")
    verify_windows: int = Field(
        6, ge=1, le=2048,
        description="evaluation windows of the quick verification runs, in [1, 2048]")
    sensitivity: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(samples=4, seqlen=256),
        description="calibration windows the per-layer sensitivities are measured on")
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig,
        description="calibration of the recipes the search writes (protocol default)")
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="evaluation of the chosen recipe (protocol default)")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        unknown = [m for m in methods if m not in SEARCHABLE]
        if unknown:
            raise ValueError(f"unknown or unsearchable method {unknown[0]!r}; allowed: "
                             f"{', '.join(SEARCHABLE)}")
        if len(set(methods)) != len(methods):
            raise ValueError("each method at most once")
        return methods

    @model_validator(mode="after")
    def _budget_fits_objective(self) -> Goal:
        sized = self.max_size_bytes is not None or self.max_size_ratio is not None
        if self.minimize in ("size_bytes", "latency_ms") and self.max_perplexity_ratio is None:
            raise ValueError(f"max_perplexity_ratio: required when minimizing {self.minimize}")
        if self.minimize == "perplexity" and not sized:
            raise ValueError("max_size_bytes: minimizing perplexity needs a size budget "
                             "(max_size_bytes or max_size_ratio)")
        if self.max_size_bytes is not None and self.max_size_ratio is not None:
            raise ValueError("max_size_ratio: give max_size_bytes or max_size_ratio, not both")
        if sized and not self.shrinking_methods():
            shrinking = [name for name, space in search_spaces().items() if space.saves_bytes]
            raise ValueError("methods: none of them shrinks the checkpoint (pruned zeros are "
                             "stored), so a size budget cannot be searched; add one of "
                             f"{', '.join(shrinking)}")
        return self

    def shrinking_methods(self) -> list[str]:
        """The goal's methods that make the checkpoint smaller, in its order: the only ones
        the search measures and allocates (one that saves no bytes cannot help a size,
        perplexity or latency budget; the report lists the others as skipped)."""
        spaces = search_spaces()
        return [m for m in self.methods if spaces[m].saves_bytes]

    def size_limit(self, original_bytes: int) -> float | None:
        """The size budget in bytes, given the original checkpoint's weight bytes."""
        if self.max_size_bytes is not None:
            return float(self.max_size_bytes)
        if self.max_size_ratio is not None:
            return self.max_size_ratio * original_bytes
        return None

    @property
    def methods_used(self) -> list[str]:
        """The methods a job with this goal may run, in order: the search's, then its
        recovery step's (the job record lists them; the metrics count their seconds)."""
        recovery = [self.recovery.method] if self.recovery is not None else []
        return [*self.methods, *recovery]

    def planned(self) -> list[PlannedRecipe]:
        """The recipes the search will run that a submission can check, located in the goal:
        the recovery step as the search writes it (with the goal's calibration), its heaviest
        run (gradients, AdamW state, a backward pass through the whole model)."""
        if self.recovery is None:
            return []
        recipe = Recipe(steps=[self.recovery], calibration=self.calibration)
        return [PlannedRecipe(recipe, ("recovery",), (("recovery",),))]

    def needs_causal_lm(self) -> list[tuple[Location, str]]:
        """The whole goal does: the search ranks its candidates by perplexity."""
        return [((), "the search ranks its candidates by perplexity")]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_goal(data: dict[str, Any] | str | Path) -> Goal:
    """From a dict, a JSON string or a `.json` file."""
    if isinstance(data, dict):
        return Goal.model_validate(data)
    text = str(data)
    if not text.lstrip().startswith("{"):
        text = Path(text).read_text(encoding="utf-8")
    return Goal.model_validate(json.loads(text))
