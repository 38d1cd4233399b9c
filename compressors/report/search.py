"""The `search` section of a goal job's report, as typed records (torch-free).

A goal job publishes the same `CompressionReport` as any job, plus this section: the goal, the
sizes it was judged against, the sensitivity measurement, each family's predicted front and
every verified candidate's predicted, measured and full-evaluation numbers. It is what
`compression_report.json` holds under `search` (read by `service/static/search.js`, the
dashboard, `bench/search.py`), what `run_search` returns and what `GoalNotMet` carries.

Why here and not in `compressors.search`: the report schema (`report.schema`) names it, and
the report is torch-free and sits below everything that writes it. For the same reason the
goal is kept as its JSON (`Goal` lives with the search, above this module).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Measured(BaseModel):
    """One run of a candidate recipe; the ratio is to the dense float32 model on the same
    windows (the run's own "before" is the dense model in the recipe's dtype)."""

    perplexity: float | None = None
    dense_perplexity: float
    before_perplexity: float | None = None
    perplexity_ratio: float | None = None
    size_bytes: int | None = Field(None, description="stored weight bytes")
    latency_ms: float | None = None
    seconds: float | None = Field(None, description="the run's own seconds")
    meets: bool = Field(False, description="within every budget of the goal")


class Predicted(BaseModel):
    """What the allocation predicted for a candidate."""

    perplexity_ratio: float
    size_bytes: float


class CandidateEntry(BaseModel):
    """One verified candidate: its recipe as written and its numbers."""

    family: str = Field(description="dtype/method:levels")
    round: int = Field(description="0: first verification; later: refinement, recovery")
    recovered: bool = Field(False, description="the recipe holds the goal's recovery step")
    recipe: dict[str, Any]
    predicted: Predicted
    measured: Measured = Field(description="at the goal's verify_windows")
    final: Measured | None = Field(None, description="at the goal's full evaluation")


class SensitivitySummary(BaseModel):
    """The sensitivity pass; families are keyed "method:level"."""

    windows: list[int] = Field(description="[samples, seqlen] of the calibration windows")
    seconds: float
    dense_loss: float = Field(description="mean next-token NLL of the dense model")
    probe_loss: dict[str, float] = Field(
        description="per family: Δ mean NLL with it applied to every layer at once")
    dtype_loss: dict[str, float] = Field(description="per dtype: Δ mean NLL of holding it")
    scale: dict[str, float] = Field(description="per family: proxy error -> Δ mean NLL")
    per_layer: dict[str, dict[str, float]] = Field(
        description="per layer and family: the predicted Δ mean NLL of that layer alone")


class SearchSection(BaseModel):
    """What the search did and why it chose what it published."""

    goal: dict[str, Any] = Field(description="the validated goal, as JSON")
    original_size_bytes: int
    size_limit_bytes: float | None = None
    skipped_methods: dict[str, str] = Field(
        default_factory=dict, description="methods of the goal the search could not use, why")
    sensitivity: SensitivitySummary
    correction: float = Field(description="median measured / predicted loss increase")
    fronts: dict[str, list[tuple[float, float]]] = Field(
        description="per family: its predicted front as [bytes, perplexity ratio]")
    pareto_predicted: list[tuple[float, float, str]] = Field(
        description="the predicted Pareto front over all families: [bytes, ratio, family]")
    candidates: list[CandidateEntry] = Field(default_factory=list)
    seconds: float = 0.0
    chosen: int | None = Field(None, description="index of the published candidate")
    chosen_recipe: dict[str, Any] | None = Field(
        None, description="the published recipe as validated (every default written out)")

    def chosen_final(self) -> Measured | None:
        """The published candidate's full-evaluation numbers (None: none was published)."""
        return None if self.chosen is None else self.candidates[self.chosen].final
