"""The verification phase: the picked allocations run as ordinary recipes at a small
evaluation budget, then one more round where measurement corrects the predictions.

Under a perplexity budget the second round rescales predicted losses by the median measured
/ predicted ratio so far and verifies the re-allocated choice, keeping a reserve; the first
correction round always runs (it may find a smaller one), later ones only while no candidate
meets the goal. Under a size budget (minimizing perplexity) it verifies the best families'
uniform recipes (`fronts.uniform_points`): at 8 bits the predicted per-layer losses are
below what a few calibration windows resolve.
"""

from __future__ import annotations

from compressors.search.allocate import Allocation
from compressors.search.fronts import Fronts, pick, uniform_points
from compressors.search.recipes import recipe_for
from compressors.search.trials import Trials

REFINE_ROUNDS = 3  # correction rounds at most, while no candidate meets the goal
REFINE_MARGIN = 0.9  # a corrected prediction still keeps 10% of the loss budget in reserve
UNIFORM_CANDIDATES = 2  # minimizing perplexity: uniform recipes verified after the predicted


def verify(trials: Trials, fronts: Fronts) -> float:
    """The first round (the goal's `candidates`), then the refinement when the goal asks for
    it. Returns the last correction (measured / predicted loss) for the report."""
    goal = trials.goal
    verify_round(trials, pick(fronts, goal, trials.size_limit), 0, goal.candidates)
    return refine(trials, fronts) if goal.refine else trials.correction()


def verify_round(trials: Trials, allocations: list[Allocation], round_: int, limit: int
                 ) -> None:
    """Verify `allocations` in order until `limit` of them ran in this round or time is
    up (after one run at least)."""
    for allocation in allocations:
        if trials.in_round(round_) >= limit:
            return
        if trials.out_of_time() and trials.candidates:
            return
        recipe = recipe_for(allocation, trials.goal, trials.goal.verify_windows)
        if recipe is not None:
            trials.verify(allocation, recipe, round_)


def refine(trials: Trials, fronts: Fronts) -> float:
    """The correction rounds (see the module's docstring); returns the last correction."""
    goal = trials.goal
    correction = trials.correction()
    if goal.minimize == "perplexity":
        verify_round(trials, uniform_points(fronts, trials.size_limit), 1, UNIFORM_CANDIDATES)
        return correction
    for round_ in range(1, REFINE_ROUNDS + 1):
        if round_ > 1 and (trials.ranked() or trials.out_of_time()):
            break
        before = len(trials.candidates)
        verify_round(trials, pick(fronts, goal, trials.size_limit, correction,
                                  (REFINE_MARGIN ** round_,)), round_, 1)
        if len(trials.candidates) == before:
            break  # nothing new to try
        correction = trials.correction()
    return correction
