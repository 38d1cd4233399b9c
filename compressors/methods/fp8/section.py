"""The `quantization` section an `fp8` step writes (torch-free): the serving schemes' shared
fields (each tensor's precision at inference among them), plus FP8's own."""

from __future__ import annotations

from pydantic import Field

from compressors.engine.sections import SchemeSection


class Fp8Section(SchemeSection):
    weights: str = Field(description="channel (one scale per output channel) or block "
                         "(one per 128×128 block)")
    activations: str = Field(description="dynamic (scales from each token at inference) or "
                             "static (one scale per layer from calibration)")
    input_scales: dict[str, float] | None = Field(
        None, description="static activations: each layer's input scale (largest calibration "
        "magnitude / 448)")
    experts_without_enough_tokens: dict[str, int] | None = Field(
        None, description="static activations: expert matrices routed too few calibration "
        "tokens for a scale of their own (engine.experts.MIN_EXPERT_TOKENS), given the largest "
        "scale of the block's experts of the same width, with the tokens they saw")
