"""Progress events: what a long job tells the CLI bar, the worker's job record and the dashboard.

A run is split into stages with fixed shares of the overall 0-1 progress, so a consumer can show
one bar that only moves forward while each stage reports its own fraction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

STAGES = ("loading", "calibrating", "compressing", "retraining", "quantizing", "evaluating",
          "saving")


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    progress: float  # overall, 0..1
    stage_progress: float  # within the stage, 0..1
    message: str


ProgressCallback = Callable[[ProgressEvent], None]


class ProgressTracker:
    """Maps (span of the run, fraction within it) to overall progress and emits events."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last = 0.0

    def span(self, stage: str, start: float, end: float) -> Callable[[float, str], None]:
        def report(fraction: float, message: str = "") -> None:
            fraction = min(max(fraction, 0.0), 1.0)
            self.last = max(self.last, start + (end - start) * fraction)
            if self.callback:
                self.callback(ProgressEvent(stage, self.last, fraction, message))

        return report
