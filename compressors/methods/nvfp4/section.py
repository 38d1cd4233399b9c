"""The `quantization` section an `nvfp4` step writes (torch-free): the serving schemes' shared
fields (each tensor's precision at inference among them), plus NVFP4's own."""

from __future__ import annotations

from pydantic import Field

from compressors.engine.sections import SchemeSection


class NVFP4Section(SchemeSection):
    activations: str = Field(description="none (16-bit, W4A16) or fp4 (NVFP4 W4A4)")
    global_scale_groups: list[list[str]] = Field(
        description="layers sharing one weight global scale (read from the same parent module "
        "with the same width, as vLLM fuses q/k/v and gate/up, which must share it); "
        "single layers are left out")
    input_global_scales: dict[str, float] | None = Field(
        None, description="activations fp4: each layer's input global scale (448 · 6 / its "
        "largest calibration magnitude)")
    experts_without_enough_tokens: dict[str, int] | None = Field(
        None, description="activations fp4: expert matrices routed too few calibration tokens "
        "for a global scale of their own, given the block's smallest among experts of their "
        "width, with the tokens they saw")
