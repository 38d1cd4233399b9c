"""What a recipe step gets besides the model, and what it hands back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors.calibration import (
    CalibrationConfig,
    EvaluationConfig,
    calibration_windows,
    evaluation_windows,
)

StepProgress = Callable[[float, str], None]


def _ignore_progress(_fraction: float, _message: str) -> None:
    return None


@dataclass
class StepContext:
    """Shared inputs of a run. Windows are tokenized lazily and only once per run."""

    model_source: Path
    tokenizer: Any
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: StepProgress = _ignore_progress
    # Facts earlier steps leave for later ones, e.g. {"masks": {layer: bool tensor}}.
    state: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def calibration_windows(self) -> torch.Tensor:
        return calibration_windows(self.tokenizer, self.calibration)

    @cached_property
    def evaluation_windows(self) -> torch.Tensor:
        return evaluation_windows(self.tokenizer, self.evaluation)


@dataclass
class StepResult:
    """`details` go into the report's step entry; `sections` become top-level report keys.

    A step that must replace the model object (e.g. swap in quantized layers by reloading)
    returns the new one in `model`.
    """

    details: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    # The evaluation-window perplexity of the model exactly as returned, if the step measured
    # it; when the step is the last one the pipeline reports it instead of measuring again.
    perplexity: float | None = None
