"""Running models for the search: the dense reference, and one candidate recipe end to end.

Why one module: it is the only part of the search that runs a model. The phases get a
`RecipeRunner` and ask it for numbers, so each can be tested with a stand-in that returns
them (`tests/test_search.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from compressors.engine.windows import evaluation_windows
from compressors.evaluate import perplexity
from compressors.io.loading import LoadedModel, load_model
from compressors.pipeline import compress
from compressors.progress import ProgressCallback
from compressors.recipe import parse_recipe
from compressors.recipe.protocol import EvaluationConfig
from compressors.report.schema import CompressionReport
from compressors.report.search import Measured
from compressors.search.candidates import measured_from
from compressors.search.spans import Span, scoped


@dataclass(frozen=True)
class RecipeRun:
    """One candidate recipe run through the pipeline: its numbers (not yet judged against
    the goal), its report and the folder holding its checkpoint."""

    measured: Measured
    report: CompressionReport
    folder: Path


class RecipeRunner(Protocol):
    """What the phases need to run a candidate: its recipe, a folder name, a progress span."""

    def run(self, recipe: dict[str, Any], name: str, span: Span) -> RecipeRun: ...


class Reference:
    """The dense float32 original, loaded on first need and kept: the sensitivity pass runs
    on it, and every perplexity ratio of the goal is to its perplexity on the same windows
    (cached per window count in `perplexities`, which a `SearchCache` may share)."""

    def __init__(self, source: Path, evaluation: EvaluationConfig,
                 perplexities: dict[int, float]) -> None:
        self.source = source
        self.evaluation = evaluation
        self.perplexities = perplexities
        self._loaded: LoadedModel | None = None

    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.source, torch.float32)
            self._loaded.model.eval()
        return self._loaded

    def perplexity(self, windows: int) -> float:
        """On the first `windows` of the goal's evaluation."""
        if windows not in self.perplexities:
            loaded = self.loaded()
            config = self.evaluation.model_copy(update={"windows": windows})
            self.perplexities[windows] = perplexity(
                loaded.model, evaluation_windows(loaded.tokenizer, config))
        return self.perplexities[windows]


@dataclass
class PipelineRunner:
    """Runs a candidate through `compressors.pipeline.compress` into `scratch/<name>`; its
    "before" is the float32 original measured once by the `Reference`, not re-measured in the
    candidate's dtype."""

    source: Path
    reference: Reference
    scratch: Path
    progress: ProgressCallback | None = None
    device: torch.device | str | None = None
    model_name: str | None = None
    roots: list[Path] | None = None

    def run(self, recipe: dict[str, Any], name: str, span: Span) -> RecipeRun:
        parsed = parse_recipe(recipe)
        dense = self.reference.perplexity(parsed.evaluation.windows)
        folder = self.scratch / name
        report = compress(self.source, parsed, folder, progress=scoped(self.progress, span),
                          overwrite=True, device=self.device, model_name=self.model_name,
                          allowed_text_roots=self.roots, before_perplexity=dense)
        return RecipeRun(measured_from(report, dense), report, folder)
