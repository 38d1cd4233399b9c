"""The report's `search` section (`report.search.SearchSection`) from what the phases found.

Built once the finals ran, whether a candidate was chosen (`chosen` set) or none met the
goal (`GoalNotMet` carries it).
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.report.search import SearchSection
from compressors.search.allocate import pareto
from compressors.search.fronts import Fronts
from compressors.search.sensitivity import Sensitivity
from compressors.search.trials import Trials

SKIPPED = "saves no bytes (pruned zeros are stored), so it cannot help this goal"


@dataclass(frozen=True)
class Sizes:
    """The sizes the goal is judged against: the original checkpoint's weight bytes and the
    goal's size budget in bytes (None: it has none)."""

    original_bytes: int
    limit: float | None


def search_section(trials: Trials, sizes: Sizes, sens: Sensitivity, fronts: Fronts,
                   correction: float) -> SearchSection:
    goal = trials.goal
    front = pareto([a for f in fronts.values() for a in f])
    return SearchSection(
        goal=goal.to_json_dict(), original_size_bytes=sizes.original_bytes,
        size_limit_bytes=sizes.limit,
        skipped_methods={m: SKIPPED for m in goal.methods if m not in goal.shrinking_methods()},
        sensitivity=sens.summary(), correction=correction,
        fronts={name: [(a.bytes, a.predicted_ratio) for a in f] for name, f in fronts.items()},
        pareto_predicted=[(a.bytes, a.predicted_ratio, a.family) for a in front],
        candidates=[c.entry() for c in trials.candidates], seconds=trials.clock.seconds())
