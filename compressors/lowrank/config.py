"""The `lowrank` recipe step's settings (PELA, Guo et al.: truncated SVD + distillation training).

Exactly one way of choosing ranks must be given, so a recipe never silently means two things;
every out-of-range value fails with the field's name and the allowed range.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressors.step_config import ExcludeLayers, IncludeLayers, StepConfig

RANK_FIELDS = ("ratio", "rank", "energy", "target_params")


class LowRankConfig(StepConfig):
    """Factorize Linear layers as up @ down (SVD, Σ^½ in both), then train only the factors."""

    method: Literal["lowrank"] = "lowrank"
    include: IncludeLayers = None
    exclude: ExcludeLayers = None
    ratio: float | None = Field(
        None, gt=1.0, le=1e4,
        description="PELA's compression ratio: rank = in*out / (ratio*(in+out)); in (1, 1e4]",
    )
    rank: int | None = Field(None, ge=1, le=65536, description="one rank for every layer, >= 1")
    energy: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="smallest rank keeping this share of Σσ² per layer; in (0, 1)",
    )
    target_params: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="fraction of the targeted layers' parameters to keep, allocated across "
        "layers (0.667 = one third fewer); in (0, 1)",
    )
    allocation: Literal["uniform", "energy"] = Field(
        "uniform",
        description="target_params only: uniform = every layer keeps the same fraction; "
        "energy = global greedy on normalized σ² gained per parameter spent",
    )
    steps: int = Field(
        200, ge=0, le=1_000_000, description="PELA training steps; 0 = SVD only; in [0, 1000000]"
    )
    lm_weight: float = Field(
        1.0, ge=0.0, le=1e3,
        description="weight of the next-token loss (causal LMs only; ignored for encoders); "
        "in [0, 1000]",
    )
    distill_alpha: float = Field(
        1.0, ge=0.0, le=1e3,
        description="α: weight of the per-block hidden-state distillation from the frozen "
        "original; in [0, 1000]",
    )
    perturbation_lambda: float = Field(
        0.1, ge=0.0, le=1e3,
        description="λ: weight of the weight-perturbation regularizer "
        "mean ‖up@down − W‖²/‖W‖²; in [0, 1000]",
    )
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW learning rate, in (0, 1]")
    warmup: int = Field(0, ge=0, description="linear warm-up steps, in [0, steps]")
    batch_size: int = Field(1, ge=1, le=1024, description="windows per step, in [1, 1024]")
    seqlen: int = Field(
        512, ge=8, le=32768,
        description="tokens per training window (calibration windows are cut to it); "
        "in [8, 32768]",
    )
    train_norms: bool = Field(False, description="also train normalization layers")
    export_dense: bool = Field(
        False,
        description="merge the factors back into dense weights after training, so the "
        "checkpoint is the standard architecture (no size saving on disk)",
    )
    evaluate: bool = Field(
        True,
        description="measure quality after SVD and after training (perplexity for causal "
        "LMs, sentence-embedding cosine to the original for encoders) for the report",
    )
    cosine_sentences: int = Field(
        64, ge=1, le=10_000,
        description="encoders: held-out sentences for the embedding cosine; in [1, 10000]",
    )
    seed: int = Field(0, ge=0, description="seeds the order of training windows")

    @model_validator(mode="after")
    def _one_rank_rule(self) -> LowRankConfig:
        given = [name for name in RANK_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"ratio/rank/energy/target_params: give exactly one, got {given or 'none'}"
            )
        if self.warmup > self.steps:
            raise ValueError(f"warmup: must be in [0, steps={self.steps}], got {self.warmup}")
        return self
