"""The finals: the best verified candidates run again at the goal's full evaluation, and the
one to publish is chosen there.

Minimizing size, the first that meets the goal is the one (its size is already known; if it
misses at the full evaluation, the next one is tried); minimizing a measured quantity, the
best `goal.finalists` run and the best measured there wins: a few verification windows rank
near-equal candidates unreliably. When none meets the goal, `not_met_message` names the
constraint out of reach with the closest candidate's numbers.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass

from compressors.search.allocate import pareto
from compressors.search.candidates import Candidate, broken_constraints, objective
from compressors.search.fronts import Fronts
from compressors.search.recipes import with_full_evaluation
from compressors.search.runner import RecipeRun
from compressors.search.spans import final_span
from compressors.search.trials import Trials


@dataclass(frozen=True)
class Final:
    """A candidate that met the goal at the full evaluation, and that run (kept to publish)."""

    candidate: Candidate
    run: RecipeRun


def run_finals(trials: Trials) -> list[Final]:
    """Full evaluations of the ranked candidates until enough met the goal there; fills each
    tried candidate's `final`. The runs that miss are not kept."""
    goal = trials.goal
    wanted = 1 if goal.minimize == "size_bytes" else goal.finalists
    finals: list[Final] = []
    for tried, candidate in enumerate(trials.ranked()):
        index = trials.candidates.index(candidate)
        run = trials.runner.run(with_full_evaluation(candidate.recipe, goal), f"final-{index}",
                                final_span(tried, wanted))
        candidate.final = trials.judged(run.measured)
        if candidate.final.meets:
            finals.append(Final(candidate, run))
        else:
            shutil.rmtree(run.folder, ignore_errors=True)
        if len(finals) >= wanted or trials.out_of_time():
            break
    return finals


def best(finals: list[Final], trials: Trials) -> Final:
    """The final with the best objective measured at the full evaluation."""
    return min(finals, key=lambda f: objective(f.run.measured, trials.goal))


def not_met_message(trials: Trials, fronts: Fronts) -> str:
    """Which constraint is out of reach, with the closest candidate's numbers (its full
    evaluation where it had one)."""
    goal, limit = trials.goal, trials.size_limit
    measured = [c.final or c.measured for c in trials.candidates]
    if not measured:
        return _unreachable_message(trials, fronts)
    closest = min(measured, key=lambda m: (len(broken_constraints(m, goal, limit)),
                                           m.perplexity_ratio or math.inf))
    broken = broken_constraints(closest, goal, limit)
    return (f"goal not met: {', '.join(broken)} out of reach; the closest candidate measured "
            f"perplexity ratio {closest.perplexity_ratio:.4f} (limit "
            f"{goal.max_perplexity_ratio}) at {closest.size_bytes} bytes (limit {limit})")


def _unreachable_message(trials: Trials, fronts: Fronts) -> str:
    """No allocation was even predicted to meet the goal: name the constraint and the
    nearest prediction."""
    front = pareto([a for f in fronts.values() for a in f])
    goal = trials.goal
    if goal.minimize == "perplexity" or goal.max_perplexity_ratio is None:
        smallest = min(a.bytes for a in front) if front else math.inf
        field = "max_size_ratio" if goal.max_size_ratio is not None else "max_size_bytes"
        return (f"goal not met: {field} out of reach; the smallest allocation is predicted at "
                f"{smallest:.0f} bytes (limit {trials.size_limit:.0f})")
    best_ratio = min((a.predicted_ratio for a in front), default=math.inf)
    return (f"goal not met: max_perplexity_ratio out of reach; the best allocation is "
            f"predicted at ratio {best_ratio:.4f} (limit {goal.max_perplexity_ratio})")
