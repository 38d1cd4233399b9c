"""The candidates verified so far, and how one more is verified: what the verification,
recovery and finals phases share.

A `Trials` holds the goal, its size limit, the time budget and a `RecipeRunner` (the only
thing that runs a model); the phases hand it recipes and read its candidates.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from compressors.report.search import Measured
from compressors.search import candidates as judge
from compressors.search.allocate import Allocation
from compressors.search.candidates import Candidate
from compressors.search.goal import Goal
from compressors.search.runner import RecipeRunner
from compressors.search.spans import verify_span


@dataclass
class Clock:
    """The goal's wall-time budget: past it, no phase starts another run (one at least
    runs)."""

    minutes: float
    began: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.began

    def spent(self) -> bool:
        return self.seconds() > self.minutes * 60


@dataclass
class Trials:
    """The search's verified candidates, in the order they ran, and what verifying one more
    needs: the goal, its size budget in bytes, the runner and the clock."""

    goal: Goal
    size_limit: float | None
    runner: RecipeRunner
    clock: Clock
    candidates: list[Candidate] = field(default_factory=list)

    def verify(self, allocation: Allocation, recipe: dict[str, Any], round_: int,
               recovered: bool = False) -> Candidate | None:
        """Run one recipe at the verification budget and keep its numbers (None when the
        same recipe was verified already). Its checkpoint is not kept."""
        if any(c.recipe == recipe for c in self.candidates):
            return None
        index = len(self.candidates)
        run = self.runner.run(recipe, f"candidate-{index}",
                              verify_span(index, self.goal.candidates))
        shutil.rmtree(run.folder, ignore_errors=True)
        candidate = Candidate(allocation, recipe, self.judged(run.measured), round=round_,
                              recovered=recovered)
        self.candidates.append(candidate)
        return candidate

    def judged(self, measured: Measured) -> Measured:
        return judge.judged(measured, self.goal, self.size_limit)

    def in_round(self, round_: int) -> int:
        return sum(1 for c in self.candidates if c.round == round_)

    def ranked(self) -> list[Candidate]:
        return judge.ranked(self.candidates, self.goal)

    def correction(self) -> float:
        return judge.correction(self.candidates)

    def out_of_time(self) -> bool:
        return self.clock.spent()
