"""The `quantization` section a `gptq` step writes (torch-free): the weight-grid quantizers'
shared fields, plus what GPTQ's Hessian work adds."""

from __future__ import annotations

from pydantic import Field

from compressors.engine.sections import QuantizationSection


class GPTQSection(QuantizationSection):
    act_order: bool = Field(description="inputs quantized by decreasing Hessian diagonal")
    dampening: float = Field(description="the fraction of the mean diagonal asked for")
    blocksize: int = Field(description="columns per lazy-update block")
    obs_loss_total: float = Field(
        description="the OBS loss GPTQ minimised, summed over layers (its own objective)")
    cholesky_fallbacks: dict[str, float] = Field(
        description="layers whose Cholesky factorisation needed more dampening, with the "
        "dampening that worked")
    dead_inputs: dict[str, int] = Field(
        description="layers with inputs no calibration token reached (zero Hessian "
        "diagonal), with how many")
    experts_without_enough_tokens: dict[str, int] = Field(
        default_factory=dict, description="expert matrices routed fewer calibration tokens "
        "than a Hessian needs (engine.experts.MIN_EXPERT_TOKENS), quantized by "
        "round-to-nearest instead, with the tokens they saw")
