"""The search end to end: a short driver over its phases, each a module of its own.

`run_search(model, goal, out_dir)` is what the CLI, the worker and `bench/search.py` call:

1. sensitivity (`search.sensitivity`): the float32 original's per-layer sensitivities to
   each level of the goal's methods, on a few calibration windows;
2. allocate (`search.fronts`, math in `search.allocate`): per dtype and byte-saving family
   the Lagrangian's predicted size / perplexity front, and the allocations worth verifying;
3. verify (`search.verify`): those allocations as ordinary recipes (`search.recipes`) run
   through the pipeline at a small evaluation budget, then one correction round;
4. recover (`search.recover`, only with the goal's `recovery`): the candidates retraining
   may help verified again with a PERP step before their quantizer;
5. finals (`search.finals`): the best that meet the goal run at the full evaluation, and
   the best measured there is chosen; if none meets it, `GoalNotMet` says which constraint
   is out of reach, with the closest candidate's numbers and the whole `search` section;
6. publish (`search.publish`): the chosen run's checkpoint with the report's `search`
   section (`search.summary`), a Pareto chart and `pareto.svg`.

The phases share a `Trials` (`search.trials`: the candidates so far and a `RecipeRunner`, the
only part that runs a model, `search.runner`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compressors.io.loading import resolve_model, size_on_disk
from compressors.progress import ProgressCallback
from compressors.publish import check_destination
from compressors.report.schema import CompressionReport
from compressors.report.search import SearchSection
from compressors.search.finals import Final, best, not_met_message, run_finals
from compressors.search.fronts import families_front
from compressors.search.goal import Goal
from compressors.search.publish import publish
from compressors.search.recover import recover
from compressors.search.runner import PipelineRunner, Reference
from compressors.search.sensitivity import Sensitivity, measure_for_goal
from compressors.search.spans import sensitivity_events
from compressors.search.summary import Sizes, search_section
from compressors.search.trials import Clock, Trials
from compressors.search.verify import verify


class GoalNotMet(RuntimeError):
    """No verified candidate meets the goal; `search` holds every candidate's numbers."""

    def __init__(self, message: str, search: SearchSection) -> None:
        super().__init__(message)
        self.search = search


@dataclass
class SearchCache:
    """What two searches on the same model can share: the sensitivity measurement and the
    dense model's perplexity per evaluation window count (benchmarks run several goals)."""

    sensitivity: Sensitivity | None = None
    dense: dict[int, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    """The published report (its `search` section is `search`) and the chosen recipe as
    validated (every default written out; `recipe.json` holds it)."""

    report: CompressionReport
    recipe: dict[str, Any]
    search: SearchSection


def run_search(
    model: str | Path, goal: Goal, out_dir: str | Path,
    progress: ProgressCallback | None = None, overwrite: bool = False,
    device: torch.device | str | None = None, model_name: str | None = None,
    allowed_text_roots: list[Path] | None = None, cache: SearchCache | None = None,
) -> SearchResult:
    """Search for the recipe that best meets `goal` and publish it into `out_dir`.

    `cache`: reuse the sensitivity and dense perplexities of an earlier search of the same
    model (benchmarks run two goals on one); it is filled in by this one.
    Raises `GoalNotMet` (with every candidate's numbers) when no candidate meets the goal.
    """
    out = Path(out_dir)
    check_destination(out.resolve(), overwrite)
    source = resolve_model(model)
    cache = cache if cache is not None else SearchCache()
    with tempfile.TemporaryDirectory(prefix="search-", dir=out.resolve().parent) as tmp:
        sizes = _sizes(source, goal)
        reference = Reference(source, goal.evaluation, cache.dense)
        runner = PipelineRunner(source, reference, Path(tmp), progress, device, model_name,
                                allowed_text_roots)
        trials = Trials(goal, sizes.limit, runner, Clock(goal.budget_minutes))
        if cache.sensitivity is None:  # 1. sensitivity
            cache.sensitivity = measure_for_goal(reference.loaded(), goal,
                                                 sensitivity_events(progress))
        fronts = families_front(cache.sensitivity, goal)  # 2. allocate
        correction = verify(trials, fronts)  # 3. verify
        if goal.recovery is not None:
            recover(trials, goal.recovery)  # 4. recover
        finals = run_finals(trials)  # 5. finals
        section = search_section(trials, sizes, cache.sensitivity, fronts, correction)
        if not finals:
            raise GoalNotMet(not_met_message(trials, fronts), section)
        return _publish_best(finals, trials, section, out, overwrite)  # 6. publish


def _publish_best(finals: list[Final], trials: Trials, section: SearchSection, out: Path,
                  overwrite: bool) -> SearchResult:
    """Publish the best final, the section saying which candidate it is."""
    chosen = best(finals, trials)
    recipe = chosen.run.report.recipe  # as validated: every default written out
    section = section.model_copy(update={
        "chosen": trials.candidates.index(chosen.candidate), "chosen_recipe": recipe})
    report = publish(chosen.run.folder, chosen.run.report, section, out, overwrite)
    return SearchResult(report=report, recipe=recipe, search=section)


def _sizes(source: Path, goal: Goal) -> Sizes:
    original = size_on_disk(source) if source.is_dir() else source.stat().st_size
    return Sizes(original, goal.size_limit(original))
