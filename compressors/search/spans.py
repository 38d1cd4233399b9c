"""Which part of the job's progress bar each phase of the search fills.

The sensitivity pass fills the first fifth (stage "calibrating"), the verifications up to
three quarters, the full evaluations the rest; each run of a candidate gets its own slice,
so progress never runs backwards while runs report their own 0..1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compressors.progress import ProgressCallback, ProgressEvent

SENSITIVITY_END = 0.2
VERIFY_END = 0.75
FINAL_END = 1.0


@dataclass(frozen=True)
class Span:
    """A slice of the overall progress, and the label its messages carry."""

    start: float
    end: float
    label: str


def verify_span(index: int, candidates: int) -> Span:
    """The `index`-th verification's slice: room for the goal's `candidates` and two more
    (refinement, recovery); later ones share the last slice."""
    share = (VERIFY_END - SENSITIVITY_END) / (candidates + 2)
    start = min(SENSITIVITY_END + index * share, VERIFY_END - share)
    return Span(start, start + share, f"candidate {index + 1}")


def final_span(tried: int, wanted: int) -> Span:
    """The `tried`-th full evaluation's slice, `wanted` of them expected."""
    share = (FINAL_END - VERIFY_END) / wanted
    start = min(VERIFY_END + tried * share, FINAL_END - share)
    return Span(start, start + share, f"full evaluation {tried + 1}")


def scoped(progress: ProgressCallback | None, span: Span) -> ProgressCallback | None:
    """`progress` for one run: its 0..1 mapped into `span`, its messages labelled."""
    if progress is None:
        return None

    def forward(event: ProgressEvent) -> None:
        progress(ProgressEvent(event.stage, span.start + (span.end - span.start) * event.progress,
                               event.stage_progress, f"{span.label}: {event.message}"))

    return forward


def sensitivity_events(progress: ProgressCallback | None) -> Callable[[float, str], None]:
    """The sensitivity pass's `(fraction, message)` reports as "calibrating" events."""
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(ProgressEvent("calibrating", SENSITIVITY_END * fraction, fraction, message))

    return report
