"""The `perp` recipe step's settings (PERP, Zimmer et al.: retrain few parameters after pruning).

Every field is validated at the edge; an out-of-range value fails with the field's name and the
allowed range, so a typo never turns into a silently different training run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressors.step_config import StepConfig

Mode = Literal["norms", "masklora", "scalelora", "lora"]


class PerpConfig(StepConfig):
    """Retrain biases + norms (every mode) and, in the LoRA modes, low-rank adapters that keep
    the pruning masks exact; the adapters are merged so the checkpoint is a plain model."""

    method: Literal["perp"] = "perp"
    mode: Mode = Field(
        "masklora",
        description="norms: biases + norms only; masklora: W + s*(BA ⊙ mask); "
        "scalelora: W ⊙ BA (BA starts at all ones); lora: W + s*BA, re-masked at merge",
    )
    objective: Literal["lm", "reconstruct"] = Field(
        "lm",
        description="lm: next-token loss of the whole model; reconstruct: block by block, "
        "MSE to the dense block's outputs on the same inputs",
    )
    steps: int = Field(
        100, ge=1, le=1_000_000,
        description="optimizer steps (reconstruct: per transformer block), in [1, 1000000]",
    )
    rank: int = Field(16, ge=1, le=4096, description="adapter rank, in [1, 4096]")
    alpha: float = Field(
        32.0, gt=0, le=1e6,
        description="additive adapters scale BA by alpha/rank; in (0, 1e6]; unused by scalelora",
    )
    lr: float = Field(2e-4, gt=0, le=1.0, description="AdamW learning rate, in (0, 1]")
    warmup: int = Field(0, ge=0, description="linear warm-up steps, in [0, steps]")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="learning-rate decay after warm-up (to 0 for linear/cosine)"
    )
    batch_size: int = Field(1, ge=1, le=1024, description="sequences per step, in [1, 1024]")
    seqlen: int = Field(512, ge=8, le=32768, description="tokens per sequence, in [8, 32768]")
    samples: int | None = Field(
        None, ge=1, le=100_000,
        description="reconstruct: training windows (default: the calibration sample count); "
        "lm draws steps * batch_size windows",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    seed: int = Field(0, ge=0, description="seeds window draws and adapter initialisation")
    text: str | None = Field(
        None, description="training text (corpus name or file path); default: calibration text"
    )
    lm_head_adapter: bool = Field(
        False, description="also train a plain LoRA on the (unpruned) LM head; unties it if tied"
    )
    evaluate: bool = Field(
        True,
        description="perplexity before and after retraining, on the evaluation text and on "
        "second_text (the report's retraining section)",
    )
    second_text: str = Field(
        "pydoc:topics",
        description="a text of another kind, to tell recovery from adapting to the training "
        "text; pydoc:topics = the Python language reference shipped with the stdlib",
    )

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> PerpConfig:
        if self.warmup > self.steps:
            raise ValueError(f"warmup: must be in [0, steps={self.steps}], got {self.warmup}")
        if self.lm_head_adapter and self.objective != "lm":
            raise ValueError("lm_head_adapter: only with objective 'lm' (reconstruct is per block)")
        return self
