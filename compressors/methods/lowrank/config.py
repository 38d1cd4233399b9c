"""The `lowrank` recipe step's settings: activation-whitened SVD (SVD-LLM), ranks allocated by
the truncation loss, a least-squares refit, then PELA training (Guo et al.).

Exactly one way of choosing ranks must be given, so a recipe never silently means two things
(the JSON schema says so too, as a `oneOf`); every out-of-range value fails with the field's
name and the allowed range. The optimizer fields are the shared `TrainingConfig`'s.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from compressors.methods.method import Method
from compressors.recipe.fields import LayerSelection, TrainingConfig
from compressors.recipe.step import MemoryNeeds, StepConfig, WeightForm
from compressors.recipe.text import TextRef

RANK_FIELDS = ("ratio", "rank", "energy", "target_params")


def _one_rank_rule_schema(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: exactly one way of choosing ranks."""
    schema["oneOf"] = [{"required": [name]} for name in RANK_FIELDS]


class LowRankConfig(StepConfig, LayerSelection, TrainingConfig):
    """Factorize Linear layers as up @ down (Σ^½ in both), then train only the factors."""

    model_config = ConfigDict(json_schema_extra=_one_rank_rule_schema)

    method: Literal["lowrank"] = "lowrank"
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
    init: Literal["whitened", "svd"] = Field(
        "whitened",
        description="whitened = truncated SVD of W·S with S Sᵀ = XXᵀ the layer's calibration "
        "Gram matrix (SVD-LLM: minimises the output error, block by block on inputs that "
        "passed through the already-factorized blocks); svd = plain truncated SVD of W "
        "(minimises the weight error, needs no calibration)",
    )
    allocation: Literal["loss", "uniform", "energy"] = Field(
        "loss",
        description="target_params only: loss = global greedy on the truncation loss σ² "
        "(relative to each layer's output energy) saved per parameter, layers where it pays "
        "more stay dense; uniform = every layer keeps the same fraction; energy = the "
        "older greedy on the plain weight spectrum",
    )
    weighting: Literal["fisher", "activations"] = Field(
        "fisher",
        description="whitened init: fisher = weight each layer's output error also by the "
        "Gram matrix of the next-token loss's gradients at its output (a Kronecker-factored "
        "Fisher), so every discarded direction costs its predicted loss increase, comparable "
        "across layers (causal LMs only; one forward and backward pass of the whole model per "
        "calibration window, so the model is held in memory; SmolLM2 at 80% kept: perplexity "
        "31.6 against 65.3); activations = each layer's plain output error on the calibration "
        "inputs (SVD-LLM), for encoders and models that must be onloaded or streamed",
    )
    max_layer_keep: float = Field(
        0.9, gt=0.0, le=1.0,
        description="a layer whose factors would keep more than this share of its "
        "parameters (and FLOPs) stays dense: two thin matmuls saving less rarely run faster; "
        "1.0 = factorize whenever it saves anything; in (0, 1]",
    )
    dampening: float = Field(
        0.01, ge=0.0, le=1.0,
        description="whitened init: λ added to the Gram diagonal, relative to its mean "
        "(inputs that never fire; with weighting fisher, to the loss gradients' Gram matrix "
        "too); in [0, 1]",
    )
    refit: bool = Field(
        False,
        description="whitened init: with `down` fixed, refit `up` by least squares so the "
        "factorized layer matches the original model's layer output (on the original "
        "model's inputs), which also corrects drift from earlier blocks; kept only where "
        "it lowers the measured error. Off by default: on SmolLM2 (full protocol, weighting "
        "activations) it lowered every layer's error yet raised perplexity, 65.3 -> 74.9 at "
        "80% kept and 141.5 -> 411.7 at 66.7%",
    )
    train_steps: int = Field(
        200, ge=0, le=1_000_000, description="PELA training steps; 0 = SVD only; in [0, 1000000]"
    )
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="AdamW learning rate, in (0, 1]")
    warmup: int = Field(0, ge=0, le=1_000_000,
                        description="linear warm-up steps (capped at train_steps)")
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
    text: TextRef | None = Field(
        None, description="PELA's training text (train_steps x batch_size fresh windows of "
        "seqlen tokens); default: the calibration text",
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

    @model_validator(mode="after")
    def _one_rank_rule(self) -> LowRankConfig:
        given = [name for name in RANK_FIELDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"ratio/rank/energy/target_params: give exactly one, got {given or 'none'}"
            )
        return self

    def weights_after(self) -> WeightForm:
        """Factors are final unless merged back: `quantize`/`gptq` take only dense Linear
        weights, so the recipe refuses them after a factorized step (422 naming both)."""
        return "dense" if self.export_dense else "factorized"

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """What this step holds, narrowed from the registry's worst case: no teacher or
        optimizer state without training, no Gram matrices with the plain init; PELA trains
        every factor, the kept share of the targeted weights (at most `max_layer_keep` when
        the rule sets ranks per layer)."""
        from dataclasses import replace

        kept = self.target_params if self.ratio is None else 1.0 / self.ratio
        return replace(declared, hessians=self.init == "whitened",
                       output_grams=self.loss_weighted,
                       teacher=declared.teacher and self.train_steps > 0,
                       training=declared.training and self.train_steps > 0,
                       trained_share=kept if kept is not None else self.max_layer_keep)

    @property
    def loss_weighted(self) -> bool:
        """The SVD is weighted by the loss gradients (only the whitened init has a weighting:
        the plain one uses no data), so its σᵢ² are predicted loss increases."""
        return self.init == "whitened" and self.weighting == "fisher"

    def needs_causal_lm(self) -> tuple[str, str] | None:
        """(field, why) when these settings need the model's next-token loss (checked at
        submission against the model's config, and again on the loaded model)."""
        if self.loss_weighted:
            return ("weighting", "weighting: fisher (the default) weights the SVD by the "
                    "next-token loss's gradients; set weighting: activations for a model "
                    "without an LM head")
        return None

    def placement_error(self, placement: str) -> str | None:
        """Why this step cannot run with the model held `placement`, or None.

        Factorization runs block by block on the sequential engine, but PELA training
        back-propagates through the whole model (LM loss at the head, distillation at every
        block), so it needs the whole model on the device at once; so does the fisher
        weighting's backward pass from the next-token loss."""
        if placement not in ("onloaded", "streamed"):
            return None
        if self.train_steps > 0:
            return (f"lowrank with train_steps > 0 (PELA) trains the whole model at once and "
                    f"cannot run {placement}; use train_steps: 0 (the whitened SVD and the refit "
                    "run block by block) or placement in_memory")
        if self.loss_weighted:
            return (f"lowrank weighting: fisher back-propagates the next-token loss through the "
                    f"whole model and cannot run {placement}; use weighting: activations "
                    "or placement in_memory")
        return None


METHOD = Method(
    "lowrank", LowRankConfig,
    "low-rank factorization of Linear layers: SVD whitened by each layer's inputs "
    "(SVD-LLM) and weighted by the loss gradients at its outputs (Kronecker-factored "
    "Fisher), block by block, ranks allocated by predicted loss, then PELA training "
    "against the frozen original (distillation + perturbation)",
    needs_calibration=True, section="lowrank",
    charts=("ranks", "lowrank-error", "pela-loss"),
    leaves_hint="its factors are not Linear weights a quantizer can take: set "
    "export_dense: true on the lowrank step to hand dense weights on",
    memory=MemoryNeeds(hessians=True, teacher=True, training=True),
    formats=("compressors.methods.lowrank.checkpoint:FORMAT",),
    layer_kinds=("compressors.methods.lowrank.layers:LAYER_KIND",))
