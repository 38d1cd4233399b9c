"""The recovery phase (the goal's `recovery`): the candidates retraining may help are
verified once more with a PERP step before their quantizer (`recipes.with_recovery`).

Minimizing perplexity or latency: the `finalists` best that met the goal (retraining lowers
perplexity; only the best can win). Minimizing size: the candidates that missed only the
perplexity budget and are smaller than the smallest that met it, smallest first, stopping
at the first that now meets it (the ones after it are larger).
"""

from __future__ import annotations

import math

from compressors.methods import PerpConfig
from compressors.search.candidates import Candidate, broken_constraints, ranked
from compressors.search.goal import Goal
from compressors.search.recipes import with_recovery
from compressors.search.trials import Trials


def worth_recovering(candidates: list[Candidate], goal: Goal, size_limit: float | None
                     ) -> list[Candidate]:
    """The verified candidates the recovery step may help, in the order to try them (never
    one already recovered)."""
    plain = [c for c in candidates if not c.recovered]
    if goal.minimize != "size_bytes":
        return ranked(plain, goal)[:goal.finalists]
    smallest_met = min((_size(c) for c in plain if c.measured.meets), default=math.inf)
    missed = [c for c in plain if _size(c) < smallest_met
              and broken_constraints(c.measured, goal, size_limit) == ["max_perplexity_ratio"]]
    return sorted(missed, key=_size)[:goal.candidates]


def _size(candidate: Candidate) -> float:
    return candidate.measured.size_bytes or math.inf


def recover(trials: Trials, recovery: PerpConfig) -> None:
    """One more round: the recovery step added to the candidates it may help, each verified
    like any other."""
    goal = trials.goal
    round_ = max((c.round for c in trials.candidates), default=0) + 1
    for candidate in worth_recovering(trials.candidates, goal, trials.size_limit):
        if trials.out_of_time():
            return
        recovered = trials.verify(candidate.allocation,
                                  with_recovery(candidate.recipe, recovery), round_,
                                  recovered=True)
        if goal.minimize == "size_bytes" and recovered is not None and recovered.measured.meets:
            return
