"""The `retraining` section a `perp` step writes (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.engine.sections import SegmentLoss, TrainSummary
from compressors.methods.perp.config import Mode
from compressors.report.schema import ReportSection


class PerplexityPair(ReportSection):
    """One text's perplexity around the retraining."""

    text: str = Field(description="`evaluation` (the recipe's evaluation windows) or the "
                      "second_text reference")
    pruned: float = Field(description="before retraining (the model the steps before left)")
    retrained: float = Field(description="after retraining, adapters merged")


class RetrainingSection(ReportSection):
    mode: Mode = Field(description="what was trained besides biases and norms")
    objective: Literal["lm", "reconstruct"] = Field(
        description="lm: next-token loss of the whole model; reconstruct: each block's "
        "output against the dense model's, block by block")
    training_text: str = Field(description="the text reference the training windows came from")
    layers_adapted: int = Field(description="layers given adapters (0 in mode norms)")
    lm_head_adapter: bool = Field(description="the LM head got an adapter too")
    trainable_parameters: int = Field(description="parameters the optimizer updated")
    model_parameters: int = Field(description="parameters of the whole model")
    trainable_percent: float = Field(description="trainable over model parameters, in %")
    steps: int = Field(description="optimizer steps, over all blocks")
    tokens: int = Field(description="tokens trained on, over all steps")
    seconds: float = Field(description="wall time of the training")
    train: TrainSummary
    block_losses: list[SegmentLoss] | None = Field(
        description="objective reconstruct: each block's first and last loss; else null")
    perplexity: dict[str, PerplexityPair] | None = Field(
        description="by text (`evaluation`, `second_text`), before and after; null when the "
        "step measured none")
    masks_preserved: bool = Field(
        description="every pruned weight is still exactly zero (checked before publishing)")
    pruned_weights: int = Field(description="weights the pruning masks hold at zero")
