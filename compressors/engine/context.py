"""What a recipe step gets besides the model, and what it hands back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressors.engine.windows import calibration_windows, evaluation_windows
from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from compressors.report.schema import Chart, ReportSection

StepProgress = Callable[[float, str], None]


def ignore_progress(_fraction: float, _message: str) -> None:
    return None


@dataclass
class StepContext:
    """Shared inputs of a run, and the facts steps leave for the ones after them.

    Token windows are built on first use and only once per run; tests and benchmarks may pass
    them in directly (`calibration_windows=`, `evaluation_windows=`).
    """

    model_source: Path
    tokenizer: Any
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: StepProgress = ignore_progress
    # How the model is held (`engine.placement`): in_memory, onloaded or streamed.
    placement_mode: str = "in_memory"
    # Layers pruned so far, and (when a later step must preserve them exactly, e.g. PERP:
    # `keep_masks`) their keep-masks {layer name: bool [out, in]} on CPU.
    pruned_layers: list[str] = field(default_factory=list)
    keep_masks: bool = True
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    calibration_windows: torch.Tensor | None = None
    evaluation_windows: torch.Tensor | None = None

    @property
    def has_calibration(self) -> bool:
        return self.calibration_windows is not None

    def calibration_tokens(self) -> torch.Tensor:
        """`[samples, seqlen]` calibration windows (tokenized once)."""
        if self.calibration_windows is None:
            self.calibration_windows = calibration_windows(self.tokenizer, self.calibration)
        return self.calibration_windows

    def evaluation_tokens(self) -> torch.Tensor:
        """`[windows, seqlen]` evaluation windows (tokenized once)."""
        if self.evaluation_windows is None:
            self.evaluation_windows = evaluation_windows(self.tokenizer, self.evaluation)
        return self.evaluation_windows


@dataclass
class StepResult:
    """What a step hands back to the pipeline.

    `details` go into the step's report entry; `section`, the method's own typed section,
    becomes the top-level report key the registry names for the method (`Method.section`);
    `charts` are added to the report's chart list. A step that must replace the model object
    (e.g. reloading into quantized layers) returns the new one in `model`. `perplexity` is
    the evaluation-window perplexity of the model exactly as returned, if the step measured
    it: when the step is the last one, the pipeline reports it instead of measuring the same
    model again.
    """

    details: dict[str, Any] = field(default_factory=dict)
    section: ReportSection | None = None
    charts: list[Chart] = field(default_factory=list)
    model: nn.Module | None = None
    perplexity: float | None = None
