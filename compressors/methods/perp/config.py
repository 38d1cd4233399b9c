"""The `perp` recipe step's settings (PERP, Zimmer et al.: retrain few parameters after pruning).

Every field is validated at the edge; an out-of-range value fails with the field's name and the
allowed range, so a typo never turns into a silently different training run. The optimizer
fields (train_steps, lr, warmup, schedule, batch_size, seqlen, seed) are the shared
`TrainingConfig`'s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from compressors.methods.method import Method
from compressors.recipe.fields import TrainingConfig
from compressors.recipe.step import MemoryNeeds, StepConfig
from compressors.recipe.text import PYDOC_TOPICS, TextRef

Mode = Literal["norms", "masklora", "scalelora", "lora"]


class PerpConfig(StepConfig, TrainingConfig):
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
    train_steps: int = Field(
        100, ge=1, le=1_000_000,
        description="optimizer steps (reconstruct: per transformer block), in [1, 1000000]",
    )
    rank: int = Field(16, ge=1, le=4096, description="adapter rank, in [1, 4096]")
    alpha: float = Field(
        32.0, gt=0, le=1e6,
        description="additive adapters scale BA by alpha/rank; in (0, 1e6]; unused by scalelora",
    )
    samples: int | None = Field(
        None, ge=1, le=100_000,
        description="reconstruct: training windows (default: the calibration sample count); "
        "lm draws train_steps * batch_size windows",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for activation memory")
    text: TextRef | None = Field(
        None, description="training text; default: the calibration text"
    )
    lm_head_adapter: bool = Field(
        False, description="also train a plain LoRA on the (unpruned) LM head; unties it if tied"
    )
    evaluate: bool = Field(
        True,
        description="perplexity before and after retraining, on the evaluation text and on "
        "second_text (the report's retraining section)",
    )
    second_text: TextRef = Field(
        TextRef(PYDOC_TOPICS),
        description="a text of another kind, to tell recovery from adapting to the training "
        "text; pydoc:topics = the Python language reference shipped with the stdlib",
    )

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """Gradient checkpointing keeps one hidden state per block instead of the whole
        backward pass's activations."""
        return replace(declared, activations_checkpointed=self.gradient_checkpointing)

    def needs_causal_lm(self) -> tuple[str, str] | None:
        """(field, why): PERP needs the model's next-token loss, in both objectives (the
        step refuses a model without an LM head; submission checks the model's config)."""
        return ("method", "perp retrains a causal language model (it measures and trains "
                "on the next-token loss)")

    @model_validator(mode="after")
    def _consistent(self) -> PerpConfig:
        if self.lm_head_adapter and self.objective != "lm":
            raise ValueError("lm_head_adapter: only with objective 'lm' (reconstruct is per block)")
        return self


METHOD = Method(
    "perp", PerpConfig,
    "PERP: retrain biases, norms and mask-keeping LoRA after pruning; sparsity "
    "stays exact",
    experts="handled",
    stage="retraining", section="retraining", charts=("perp-loss",),
    uses_masks=True, memory=MemoryNeeds(training=True))
