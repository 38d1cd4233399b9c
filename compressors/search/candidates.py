"""A verified candidate and how candidates are judged and ranked (no torch, no runs).

Why apart from the phases: verification, recovery and the finals all ask the same questions
of the candidates (does it meet the goal, which is best, how far off were the predictions),
and each answer is a small pure function a test can check on made-up numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from compressors.report.schema import CompressionReport
from compressors.report.search import CandidateEntry, Measured, Predicted
from compressors.search.allocate import Allocation
from compressors.search.goal import Goal


@dataclass
class Candidate:
    """An allocation's recipe and what was measured of it."""

    allocation: Allocation
    recipe: dict[str, Any]
    measured: Measured  # at the goal's verify_windows
    final: Measured | None = None  # at the goal's full evaluation (the finals)
    round: int = 0
    recovered: bool = False  # the recipe holds the goal's recovery (PERP) step

    def entry(self) -> CandidateEntry:
        """The report's view of it."""
        return CandidateEntry(
            family=self.allocation.family, round=self.round, recovered=self.recovered,
            recipe=self.recipe, measured=self.measured, final=self.final,
            predicted=Predicted(perplexity_ratio=self.allocation.predicted_ratio,
                                size_bytes=self.allocation.bytes))


def measured_from(report: CompressionReport, dense: float) -> Measured:
    """A run's numbers (not yet judged); the ratio is to the dense float32 model on the same
    windows (`dense`), not to the run's own "before" (the dense model in the recipe's dtype)."""
    before, after = report.metrics.before, report.metrics.after
    ratio = after.perplexity / dense if after.perplexity else None
    return Measured(perplexity=after.perplexity, dense_perplexity=dense,
                    before_perplexity=before.perplexity, perplexity_ratio=ratio,
                    size_bytes=after.size_bytes, latency_ms=after.latency_ms,
                    seconds=report.seconds_total)


def broken_constraints(measured: Measured, goal: Goal, size_limit: float | None) -> list[str]:
    """The goal's fields a measured candidate is out of (empty: it meets the goal)."""
    broken = []
    ratio = measured.perplexity_ratio
    if goal.max_perplexity_ratio is not None and (ratio is None
                                                  or ratio > goal.max_perplexity_ratio):
        broken.append("max_perplexity_ratio")
    if size_limit is not None and (measured.size_bytes or math.inf) > size_limit:
        broken.append("max_size_ratio" if goal.max_size_ratio is not None else "max_size_bytes")
    return broken


def judged(measured: Measured, goal: Goal, size_limit: float | None) -> Measured:
    """`measured` with `meets` said."""
    return measured.model_copy(
        update={"meets": not broken_constraints(measured, goal, size_limit)})


def objective(measured: Measured, goal: Goal) -> float:
    """The value the goal minimizes (inf when the run did not measure it)."""
    value = {"size_bytes": measured.size_bytes, "perplexity": measured.perplexity,
             "latency_ms": measured.latency_ms}[goal.minimize]
    return float(value) if value is not None else math.inf


def ranked(candidates: list[Candidate], goal: Goal) -> list[Candidate]:
    """The verified candidates that meet the goal, best measured objective first."""
    good = [c for c in candidates if c.measured.meets]
    return sorted(good, key=lambda c: objective(c.measured, goal))


def correction(candidates: list[Candidate]) -> float:
    """Median measured / predicted loss increase of the verified candidates (1: none says)."""
    ratios = []
    for c in candidates:
        measured = c.measured.perplexity_ratio
        if measured and c.allocation.loss > 1e-6:
            ratios.append(max(math.log(measured), 1e-6) / c.allocation.loss)
    return statistics.median(ratios) if ratios else 1.0
