"""The search end to end: sensitivity, allocation, verification, publication.

`run_search(model, goal, out_dir)` is what the CLI, the worker and `bench/search.py` call:

1. the model is loaded in float32 and its per-layer sensitivities measured on a few
   calibration windows (`search.sensitivity`);
2. for each dtype and each byte-saving operation family the Lagrangian traces the predicted
   size / perplexity front (`search.allocate`), and the goal picks a few allocations;
3. each is written as an ordinary recipe (`search.steps`) and run through
   `compressors.pipeline.compress` at a small evaluation budget; one more round either
   rescales the predictions by what was measured and verifies the re-allocated choice
   (perplexity budgets) or verifies the best families' uniform recipes (size budgets, where
   the predicted 8-bit losses are below what the sensitivity windows resolve);
4. with the goal's `recovery`, the candidates retraining may help are verified once more
   with a PERP step before their quantizer (`worth_recovering`, `with_recovery`);
5. the best measured candidates that meet the goal run again at the goal's full evaluation
   (minimizing size: the first that meets it; minimizing perplexity or latency: the best
   `goal.finalists`, the best measured there wins), and that run is published with a
   `search` section, a Pareto chart and `pareto.svg`; if none meets it, `GoalNotMet` says
   which constraint is out of reach, with the numbers of the closest candidate.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compressors.engine.windows import calibration_windows, evaluation_windows
from compressors.evaluate import perplexity
from compressors.io.loading import load_model, resolve_model, size_on_disk
from compressors.methods import METHODS, PerpConfig, import_object
from compressors.pipeline import compress
from compressors.progress import ProgressCallback, ProgressEvent
from compressors.publish import MANIFEST_FILE, check_destination, staging_folder
from compressors.recipe import parse_recipe
from compressors.report import REPORT_FILE
from compressors.report.schema import Chart, Series
from compressors.search.allocate import (
    Allocation,
    Option,
    best_within,
    lagrangian_front,
    pareto,
    smallest_within,
)
from compressors.search.goal import Goal
from compressors.search.operations import DTYPE_BYTES, OPERATIONS, layer_bytes
from compressors.search.plot import PARETO_FILE, pareto_svg
from compressors.search.sensitivity import Sensitivity, measure

_SENSITIVITY, _VERIFY, _FINAL = 0.2, 0.75, 1.0
MARGINS = (1.0, 0.75, 0.5)
REFINE_ROUNDS = 3  # correction rounds at most, while no candidate meets the goal
REFINE_MARGIN = 0.9  # a corrected prediction still keeps 10% of the loss budget in reserve
UNIFORM_CANDIDATES = 2  # minimizing perplexity: uniform recipes verified after the predicted


class GoalNotMet(RuntimeError):
    """No verified candidate meets the goal; `search` holds every candidate's numbers."""

    def __init__(self, message: str, search: dict[str, Any]) -> None:
        super().__init__(message)
        self.search = search


@dataclass
class Candidate:
    allocation: Allocation
    recipe: dict[str, Any]
    measured: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    round: int = 0
    recovered: bool = False  # the recipe holds the goal's recovery (PERP) step

    def to_json(self) -> dict[str, Any]:
        return {"family": self.allocation.family, "round": self.round,
                "recovered": self.recovered, "recipe": self.recipe,
                "predicted": {"perplexity_ratio": self.allocation.predicted_ratio,
                              "size_bytes": self.allocation.bytes},
                "measured": self.measured, "final": self.final}


@dataclass
class SearchCache:
    """What two searches on the same model can share: the sensitivity measurement and the
    dense model's perplexity per evaluation window count (benchmarks run several goals)."""

    sensitivity: Sensitivity | None = None
    dense: dict[int, float] = field(default_factory=dict)


@dataclass
class SearchResult:
    report: dict[str, Any]
    recipe: dict[str, Any]
    search: dict[str, Any] = field(default_factory=dict)


# ---- allocation --------------------------------------------------------------------------

def families_front(sens: Sensitivity, goal: Goal) -> dict[str, list[Allocation]]:
    """Per (dtype, method[, level]) family, its Lagrangian front of predicted allocations."""
    fronts: dict[str, list[Allocation]] = {}
    for dtype in goal.dtypes:
        fixed = sens.other_parameters * DTYPE_BYTES[dtype]
        for method in goal.methods:
            op = OPERATIONS[method]
            if not op.saves_bytes:
                continue
            groups = [op.levels] if op.mixed_levels else [(level,) for level in op.levels]
            for levels in groups:
                family = f"{dtype}/{method}:{'+'.join(levels)}"
                options = {
                    name: [Option("dense", layer_bytes(None, "dense", *shape, dtype), 0.0)]
                    + [Option(lv, layer_bytes(method, lv, *shape, dtype),
                              sens.loss(name, (method, lv))) for lv in levels]
                    for name, shape in sens.layers.items()}
                front = lagrangian_front(family, options, fixed, sens.dtype_loss[dtype])
                for allocation in front:
                    allocation.meta = {"dtype": dtype, "method": method}
                fronts[family] = front
    return fronts


def recipe_for(allocation: Allocation, goal: Goal, windows: int | None = None
               ) -> dict[str, Any] | None:
    """The ordinary recipe of an allocation (None when it changes no layer)."""
    method = allocation.meta["method"]
    op = OPERATIONS[method]
    builder = import_object(op.step)
    if not op.mixed_levels:  # one level per step (bitsandbytes, gptq)
        levels = {lv for lv in allocation.choices.values() if lv != "dense"}
        step = builder(allocation.choices, levels.pop()) if levels else None
    else:
        step = builder(method, allocation.choices)
    if step is None:
        return None
    evaluation = goal.evaluation.model_dump(mode="json")
    if windows is not None:
        evaluation["windows"] = windows
    return {"steps": [step], "dtype": allocation.meta["dtype"],
            "calibration": goal.calibration.model_dump(mode="json"), "evaluation": evaluation}


def pick(fronts: dict[str, list[Allocation]], goal: Goal, size_limit: float | None,
         correction: float = 1.0, margins: tuple[float, ...] = MARGINS) -> list[Allocation]:
    """The allocations worth verifying, best first: per family the best predicted one at a
    few safety margins, `correction` rescaling predicted losses (measured / predicted)."""
    picked: list[Allocation] = []
    for margin in margins:
        per_family = []
        for front in fronts.values():
            if goal.minimize == "perplexity":
                choice = best_within(front, (size_limit or math.inf) * (1 - (1 - margin) / 10))
            else:
                budget = math.log(goal.max_perplexity_ratio or math.inf) * margin / correction
                choice = smallest_within(front, budget)
            if choice is not None:
                per_family.append(choice)
        key = (lambda a: (a.loss, a.bytes)) if goal.minimize == "perplexity" else \
            (lambda a: (a.bytes, a.loss))
        picked.extend(sorted(per_family, key=key))
    unique: list[Allocation] = []
    for allocation in picked:
        if not any(allocation.choices == u.choices and allocation.meta == u.meta
                   for u in unique):
            unique.append(allocation)
    return unique


def uniform_points(fronts: dict[str, list[Allocation]], size_limit: float | None
                   ) -> list[Allocation]:
    """Per family, the allocation that applies its level to every layer (the front's
    fewest-bytes end), where it fits the size budget.

    For the perplexity objective the front's best point keeps the layers predicted most
    sensitive dense; at 8 bits the predicted losses are below what a few calibration
    windows resolve, and measured, quantizing those layers too was no worse (SmolLM2: GPTQ
    int8 on every layer 24.328 against 24.339 with 69 layers kept float32). So the uniform
    recipe of each family is verified beside the predicted ones and measurement decides."""
    limit = size_limit if size_limit is not None else math.inf
    points = [min(front, key=lambda a: (a.bytes, a.loss)) for front in fronts.values() if front]
    return sorted((a for a in points if a.bytes <= limit), key=lambda a: (a.loss, a.bytes))


# ---- verification ------------------------------------------------------------------------

def _metrics(report: dict[str, Any], dense: float) -> dict[str, Any]:
    """A run's numbers; the ratio is to the dense float32 model on the same windows (the
    run's own "before" is the dense model in the recipe's dtype)."""
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    ratio = after["perplexity"] / dense if after.get("perplexity") else None
    return {"perplexity": after.get("perplexity"), "dense_perplexity": dense,
            "before_perplexity": before.get("perplexity"), "perplexity_ratio": ratio,
            "size_bytes": after.get("size_bytes"),
            "latency_ms": after.get("latency_ms"), "seconds": report.get("seconds_total")}


def meets(measured: dict[str, Any], goal: Goal, size_limit: float | None) -> list[str]:
    """The constraints a measured candidate breaks (empty: it meets the goal)."""
    broken = []
    ratio = measured.get("perplexity_ratio")
    if goal.max_perplexity_ratio is not None and (ratio is None
                                                  or ratio > goal.max_perplexity_ratio):
        broken.append("max_perplexity_ratio")
    if size_limit is not None and (measured.get("size_bytes") or math.inf) > size_limit:
        broken.append("max_size_ratio" if goal.max_size_ratio is not None else "max_size_bytes")
    return broken


def _objective(measured: dict[str, Any], goal: Goal) -> float:
    value = measured.get(goal.minimize)
    return float(value) if value is not None else math.inf


def _scoped(progress: ProgressCallback | None, start: float, end: float, label: str
            ) -> ProgressCallback | None:
    if progress is None:
        return None

    def forward(event: ProgressEvent) -> None:
        progress(ProgressEvent(event.stage, start + (end - start) * event.progress,
                               event.stage_progress, f"{label}: {event.message}"))

    return forward


def _report_events(progress: ProgressCallback | None, stage: str, start: float, end: float
                   ) -> Callable[[float, str], None]:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(ProgressEvent(stage, start + (end - start) * fraction, fraction, message))

    return report


def _run_recipe(source: Path, recipe: dict[str, Any], out: Path, progress, device,
                model_name: str | None, roots: list[Path] | None,
                dense: float) -> dict[str, Any]:
    """One candidate through the pipeline; its "before" is the float32 original, measured
    once by the search (`dense`), not re-measured in the candidate's dtype."""
    report = compress(source, parse_recipe(recipe), out, progress=progress, overwrite=True,
                      device=device, model_name=model_name, allowed_text_roots=roots,
                      before_perplexity=dense)
    return report.to_json()


# ---- the search --------------------------------------------------------------------------

class _Search:
    def __init__(self, source: Path, goal: Goal, progress: ProgressCallback | None,
                 device: torch.device | str | None, model_name: str | None,
                 roots: list[Path] | None, scratch: Path, cache: SearchCache) -> None:
        self.source, self.goal, self.progress = source, goal, progress
        self.device, self.model_name, self.roots, self.scratch = device, model_name, roots, scratch
        self.began = time.perf_counter()
        self.original_bytes = size_on_disk(source) if source.is_dir() else source.stat().st_size
        self.size_limit = goal.size_limit(self.original_bytes)
        self.candidates: list[Candidate] = []
        self.fronts: dict[str, list[Allocation]] = {}
        self._model: Any = None
        self.cache = cache
        self._dense = cache.dense

    def _loaded(self) -> Any:
        if self._model is None:
            self._model = load_model(self.source, torch.float32)
            self._model.model.eval()
        return self._model

    def dense_perplexity(self, windows: int) -> float:
        """The float32 original's perplexity on the first `windows` evaluation windows: what
        every perplexity ratio of the goal is measured against."""
        if windows not in self._dense:
            loaded = self._loaded()
            config = self.goal.evaluation.model_copy(update={"windows": windows})
            self._dense[windows] = perplexity(
                loaded.model, evaluation_windows(loaded.tokenizer, config))
        return self._dense[windows]

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.began > self.goal.budget_minutes * 60

    def sensitivity(self) -> Sensitivity:
        loaded = self._loaded()
        model = loaded.model
        windows = calibration_windows(loaded.tokenizer, self.goal.sensitivity)
        methods = [m for m in self.goal.methods if OPERATIONS[m].saves_bytes]
        return measure(model, windows, methods, list(self.goal.dtypes),
                       _report_events(self.progress, "calibrating", 0.0, _SENSITIVITY))

    def verify(self, allocations: list[Allocation], round_: int, limit: int) -> None:
        for allocation in allocations:
            if len([c for c in self.candidates if c.round == round_]) >= limit:
                return
            if self.out_of_time() and self.candidates:
                return
            recipe = recipe_for(allocation, self.goal, self.goal.verify_windows)
            if recipe is not None:
                self.verify_recipe(allocation, recipe, round_)

    def verify_recipe(self, allocation: Allocation, recipe: dict[str, Any], round_: int,
                      recovered: bool = False) -> Candidate | None:
        """Run one candidate recipe at the verification budget and keep its numbers (None
        when the same recipe was verified already)."""
        if any(c.recipe == recipe for c in self.candidates):
            return None
        index = len(self.candidates)
        share = (_VERIFY - _SENSITIVITY) / (self.goal.candidates + 2)
        start = min(_SENSITIVITY + index * share, _VERIFY - share)
        dense = self.dense_perplexity(self.goal.verify_windows)
        report = _run_recipe(self.source, recipe, self.scratch / f"candidate-{index}",
                             _scoped(self.progress, start, start + share,
                                     f"candidate {index + 1}"),
                             self.device, self.model_name, self.roots, dense)
        shutil.rmtree(self.scratch / f"candidate-{index}", ignore_errors=True)
        candidate = Candidate(allocation, recipe, _metrics(report, dense), round=round_,
                              recovered=recovered)
        candidate.measured["meets"] = not meets(candidate.measured, self.goal, self.size_limit)
        self.candidates.append(candidate)
        return candidate

    def correction(self) -> float:
        """Median measured / predicted loss increase of the verified candidates."""
        ratios = []
        for c in self.candidates:
            measured = c.measured.get("perplexity_ratio")
            if measured and c.allocation.loss > 1e-6:
                ratios.append(max(math.log(measured), 1e-6) / c.allocation.loss)
        return statistics.median(ratios) if ratios else 1.0

    def ranked(self) -> list[Candidate]:
        return ranked(self.candidates, self.goal)


def ranked(candidates: list[Candidate], goal: Goal) -> list[Candidate]:
    """The verified candidates that meet the goal, best measured objective first."""
    good = [c for c in candidates if c.measured and c.measured["meets"]]
    return sorted(good, key=lambda c: _objective(c.measured, goal))


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
    with tempfile.TemporaryDirectory(prefix="search-", dir=out.resolve().parent) as tmp:
        cache = cache if cache is not None else SearchCache()
        search = _Search(source, goal, progress, device, model_name, allowed_text_roots,
                         Path(tmp), cache)
        if cache.sensitivity is None:
            cache.sensitivity = search.sensitivity()
        sens = cache.sensitivity
        fronts = families_front(sens, goal)
        search.fronts = fronts
        search.verify(pick(fronts, goal, search.size_limit), 0, goal.candidates)
        correction = _refine(search, fronts) if goal.refine else search.correction()
        if goal.recovery is not None:
            _recover(search, goal.recovery)
        summary = _summary(search, sens, fronts, correction)
        return _finish(search, summary, out, overwrite)


def _refine(search: _Search, fronts: dict[str, list[Allocation]]) -> float:
    """Correction rounds. Under a perplexity budget: rescale predicted losses by the median
    measured / predicted ratio so far and verify the re-allocated choice, keeping a reserve;
    the first round always runs (it may find a smaller one), later ones only while no
    candidate meets the goal. Under a size budget (minimizing perplexity): one round that
    verifies the best predicted families' uniform recipes (`uniform_points`). Returns the
    last correction."""
    correction = search.correction()
    if search.goal.minimize == "perplexity":
        search.verify(uniform_points(fronts, search.size_limit), 1, UNIFORM_CANDIDATES)
        return correction
    for round_ in range(1, REFINE_ROUNDS + 1):
        if round_ > 1 and (search.ranked() or search.out_of_time()):
            break
        before = len(search.candidates)
        search.verify(pick(fronts, search.goal, search.size_limit, correction,
                           (REFINE_MARGIN ** round_,)), round_, 1)
        if len(search.candidates) == before:
            break  # nothing new to try
        correction = search.correction()
    return correction


def with_recovery(recipe: dict[str, Any], recovery: PerpConfig) -> dict[str, Any]:
    """`recipe` with the recovery step before its first quantizing step (quantized weights
    are final, so retraining comes first: it adapts the weights the quantizer then rounds, and
    after pruning it recovers the pruned ones), or last when nothing quantizes."""
    steps = list(recipe["steps"])
    at = next((i for i, step in enumerate(steps)
               if METHODS[step["method"]].stage == "quantizing"), len(steps))
    steps.insert(at, recovery.model_dump(mode="json"))
    return dict(recipe, steps=steps)


def worth_recovering(candidates: list[Candidate], goal: Goal, size_limit: float | None
                     ) -> list[Candidate]:
    """The verified candidates the recovery step may help, in the order to try them.

    Minimizing perplexity or latency: the `finalists` best that meet the goal (retraining
    lowers perplexity; only the best can win). Minimizing size: the candidates that missed
    only the perplexity budget and are smaller than the smallest that met the goal, smallest
    first (retraining may bring one within the budget: a smaller checkpoint than any that
    met it)."""
    plain = [c for c in candidates if c.measured and not c.recovered]
    if goal.minimize != "size_bytes":
        return ranked(plain, goal)[:goal.finalists]
    smallest_met = min((c.measured["size_bytes"] for c in plain if c.measured["meets"]),
                       default=math.inf)
    missed = [c for c in plain if meets(c.measured, goal, size_limit) == ["max_perplexity_ratio"]
              and c.measured["size_bytes"] < smallest_met]
    return sorted(missed, key=lambda c: c.measured["size_bytes"])[:goal.candidates]


def _recover(search: _Search, recovery: PerpConfig) -> None:
    """One more round: the goal's recovery step added to the candidates it may help
    (`worth_recovering`), each verified like any other; minimizing size it stops at the
    first that meets the goal (the ones after it are larger)."""
    goal = search.goal
    round_ = max((c.round for c in search.candidates), default=0) + 1
    for candidate in worth_recovering(search.candidates, goal, search.size_limit):
        if search.out_of_time():
            return
        recovered = search.verify_recipe(candidate.allocation,
                                         with_recovery(candidate.recipe, recovery),
                                         round_, recovered=True)
        if goal.minimize == "size_bytes" and recovered is not None \
                and recovered.measured["meets"]:
            return


def _finish(search: _Search, summary: dict[str, Any], out: Path,
            overwrite: bool) -> SearchResult:
    """Run the best verified candidates at the full evaluation and publish the best that
    meets the goal there. Minimizing size, the first that meets it is the one (its size is
    already known); minimizing a measured quantity, `goal.finalists` of them are run and the
    best measured at the full evaluation wins."""
    goal = search.goal
    wanted = 1 if goal.minimize == "size_bytes" else goal.finalists
    finalists: list[tuple[Candidate, dict[str, Any], Path]] = []
    for tried, candidate in enumerate(search.ranked()):
        final_dir = search.scratch / f"final-{search.candidates.index(candidate)}"
        share = (_FINAL - _VERIFY) / wanted  # each finalist its own slice: progress never
        start = min(_VERIFY + tried * share, _FINAL - share)  # runs backwards
        report = _final_run(search, candidate, final_dir,
                            _scoped(search.progress, start, start + share,
                                    f"full evaluation {tried + 1}"))
        if candidate.final["meets"]:
            finalists.append((candidate, report, final_dir))
        else:
            shutil.rmtree(final_dir, ignore_errors=True)
        if len(finalists) >= wanted or search.out_of_time():
            break
    summary["candidates"] = [c.to_json() for c in search.candidates]
    summary["seconds"] = time.perf_counter() - search.began
    if not finalists:
        raise GoalNotMet(_not_met_message(search), summary)
    candidate, report, final_dir = min(finalists, key=lambda f: _objective(f[0].final, goal))
    recipe = report["recipe"]  # as validated: every default written out
    summary["chosen"] = search.candidates.index(candidate)
    summary["chosen_recipe"] = recipe
    report = _publish(final_dir, report, summary, out, overwrite)
    return SearchResult(report=report, recipe=recipe, search=summary)


def _final_run(search: _Search, candidate: Candidate, final_dir: Path,
               progress: ProgressCallback | None) -> dict[str, Any]:
    """One candidate's recipe at the goal's full evaluation; fills `candidate.final`."""
    goal = search.goal
    recipe = dict(candidate.recipe, evaluation=goal.evaluation.model_dump(mode="json"))
    dense = search.dense_perplexity(goal.evaluation.windows)
    report = _run_recipe(search.source, recipe, final_dir, progress,
                         search.device, search.model_name, search.roots, dense)
    candidate.final = _metrics(report, dense)
    candidate.final["meets"] = not meets(candidate.final, goal, search.size_limit)
    return report


def _not_met_message(search: _Search) -> str:
    goal = search.goal
    measured = [(c.final or c.measured, c) for c in search.candidates if c.measured]
    if not measured:
        return _unreachable_message(search)
    closest, _ = min(measured, key=lambda m: (len(meets(m[0], goal, search.size_limit)),
                                              m[0].get("perplexity_ratio") or math.inf))
    broken = meets(closest, goal, search.size_limit)
    ratio, size = closest.get("perplexity_ratio"), closest.get("size_bytes")
    return (f"goal not met: {', '.join(broken)} out of reach; the closest candidate measured "
            f"perplexity ratio {ratio:.4f} (limit {goal.max_perplexity_ratio}) at "
            f"{size} bytes (limit {search.size_limit})")


def _unreachable_message(search: _Search) -> str:
    """No allocation was even predicted to meet the goal: name the constraint and the
    nearest prediction."""
    front = pareto([a for f in search.fronts.values() for a in f])
    goal = search.goal
    if goal.minimize == "perplexity" or goal.max_perplexity_ratio is None:
        smallest = min(a.bytes for a in front) if front else math.inf
        field = "max_size_ratio" if goal.max_size_ratio is not None else "max_size_bytes"
        return (f"goal not met: {field} out of reach; the smallest allocation is predicted at "
                f"{smallest:.0f} bytes (limit {search.size_limit:.0f})")
    best = min((a.predicted_ratio for a in front), default=math.inf)
    return (f"goal not met: max_perplexity_ratio out of reach; the best allocation is "
            f"predicted at ratio {best:.4f} (limit {goal.max_perplexity_ratio})")


def _summary(search: _Search, sens: Sensitivity, fronts: dict[str, list[Allocation]],
             correction: float) -> dict[str, Any]:
    goal = search.goal
    skipped = {m: "saves no bytes (pruned zeros are stored), so it cannot help this goal"
               for m in goal.methods if not OPERATIONS[m].saves_bytes}
    front = pareto([a for f in fronts.values() for a in f])
    return {
        "goal": goal.to_json_dict(), "original_size_bytes": search.original_bytes,
        "size_limit_bytes": search.size_limit, "skipped_methods": skipped,
        "sensitivity": sens.to_json(), "correction": correction,
        "fronts": {name: [[a.bytes, a.predicted_ratio] for a in f]
                   for name, f in fronts.items()},
        "pareto_predicted": [[a.bytes, a.predicted_ratio, a.family] for a in front],
    }


def pareto_chart(summary: dict[str, Any]) -> Chart:
    """The same plot as `pareto.svg`, as a chart the dashboard draws for any report."""
    series = [Series(name=f"predicted {name}",
                     points=[(round(b / 1e6, 3), round(r, 5)) for b, r in points])
              for name, points in summary["fronts"].items()]
    plain = [c for c in summary["candidates"] if not c.get("recovered")]
    retrained = [c for c in summary["candidates"] if c.get("recovered")]
    for key, label, candidates in (("measured", "verified (small budget)", plain),
                                   ("measured", "verified, retrained (PERP)", retrained),
                                   ("final", "chosen (full)", summary["candidates"])):
        points = [(round(c[key]["size_bytes"] / 1e6, 3), round(c[key]["perplexity_ratio"], 5))
                  for c in candidates if c.get(key) and c[key]["perplexity_ratio"]]
        if points:
            series.append(Series(name=label, points=sorted(points)))
    limit = summary["goal"].get("max_perplexity_ratio")
    return Chart(id="search-pareto", title="Size against perplexity (search)", kind="line",
                 x_label="size MB", y_label="perplexity / dense", series=series,
                 reference=limit)


def _publish(final_dir: Path, report: dict[str, Any], summary: dict[str, Any], out: Path,
             overwrite: bool) -> dict[str, Any]:
    """The chosen run's files plus the search section, its chart and `pareto.svg`."""
    report = dict(report, search=summary)
    report["charts"] = [*report.get("charts", []), pareto_chart(summary).model_dump(mode="json")]
    with staging_folder(out, overwrite) as staging:
        for path in final_dir.iterdir():
            if path.name == MANIFEST_FILE:
                continue
            target = staging / path.name
            if path.is_dir():
                shutil.copytree(path, target)
            else:
                shutil.copy2(path, target)
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2), encoding="utf-8")
        (staging / PARETO_FILE).write_text(pareto_svg(summary), encoding="utf-8")
    return report
