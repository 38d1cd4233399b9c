"""The evaluation protocol's settings (docs/evaluation.md): which text, how many windows,
how long.

Plain pydantic without torch, so the API can validate a recipe without loading the tensor side;
`engine.windows` turns these settings into token windows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from compressors.recipe.fields import Seed
from compressors.recipe.text import CALIBRATION_TEXT, EVALUATION_TEXT, TextRef

# Bounds on the tokens of one job's calibration and evaluation, whatever the model: past them a
# job runs for days. The memory estimate (`compressors.memory`, applied at submission against
# the workers' advertised limits) bounds them further per model and worker.
MAX_CALIBRATION_TOKENS = 1024 * 2048
MAX_EVALUATION_TOKENS = 2048 * 2048
# Positions per LM-head call when a model is evaluated block by block: the evaluation runs the
# head this many positions at a time and the memory estimate counts their logits.
LOGIT_CHUNK = 128


class CalibrationConfig(BaseModel):
    """Where statistics-driven methods (wanda, sparsegpt, ...) look at activations."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    text: TextRef = Field(TextRef(CALIBRATION_TEXT), description="the calibration text")
    samples: int = Field(32, ge=1, le=1024, description="number of windows, in [1, 1024]")
    seqlen: int = Field(512, ge=8, le=8192, description="tokens per window, in [8, 8192]")
    seed: Seed = 0
    experts: Literal["auto", "routed", "all"] = Field(
        "auto", description="mixture-of-experts models: which tokens an expert's statistics "
        "(input norms, Hessians) come from: routed (those its router sends it), all (every "
        "calibration token through every expert, for statistics only: the block's output "
        "stays the routed one; llm-compressor's calibrate_all_experts), auto (all for the "
        "Hessian methods sparsegpt and gptq, whose rare experts would otherwise see too few "
        "tokens for a Hessian; routed for the others)")

    def all_experts(self, hessian: bool) -> bool:
        """Whether every token goes through every expert for a method's statistics."""
        return self.experts == "all" or (self.experts == "auto" and hessian)

    @model_validator(mode="after")
    def _token_budget(self) -> CalibrationConfig:
        if self.samples * self.seqlen > MAX_CALIBRATION_TOKENS:
            raise ValueError(f"samples x seqlen = {self.samples * self.seqlen} tokens; the "
                             f"bound is {MAX_CALIBRATION_TOKENS} calibration tokens")
        return self


class EvaluationConfig(BaseModel):
    """Perplexity measurement; `windows: 0` skips it (the report then says null)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    text: TextRef = Field(TextRef(EVALUATION_TEXT), description="the held-out text")
    windows: int = Field(40, ge=0, le=2048,
                         description="first N non-overlapping windows, in [0, 2048]")
    seqlen: int = Field(512, ge=8, le=8192, description="tokens per window, in [8, 8192]")

    @model_validator(mode="after")
    def _token_budget(self) -> EvaluationConfig:
        if self.windows * self.seqlen > MAX_EVALUATION_TOKENS:
            raise ValueError(f"windows x seqlen = {self.windows * self.seqlen} tokens; the "
                             f"bound is {MAX_EVALUATION_TOKENS} evaluation tokens")
        return self
