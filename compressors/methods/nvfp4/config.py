"""The `nvfp4` step's settings (torch-free): FP4 E2M1 weights in groups of 16 with FP8 scales
and a global scale (NVIDIA's NVFP4, Blackwell), activations 16-bit or FP4 the same way."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.methods.method import Method
from compressors.recipe.fields import LayerSelection
from compressors.recipe.step import StepConfig, WeightForm, packed_checkpoint_placement_error

GROUP = 16  # NVFP4's group of weights (and of activation values) per FP8 scale


class NVFP4Config(StepConfig, LayerSelection):
    """NVFP4 (llm-compressor's NVFP4A16 and NVFP4 schemes): round-to-nearest FP4 weights, no
    calibration for the weight-only form. With `activations: fp4` the evaluation after it runs
    with the inputs of every quantized layer in NVFP4 too (simulated on CPU)."""

    method: Literal["nvfp4"] = "nvfp4"
    activations: Literal["none", "fp4"] = Field(
        "none", description="none: 16-bit activations (W4A16, data-free); fp4: each group of 16 "
        "input values of a token in FP4 with a dynamic FP8 scale, under one static global scale "
        "per layer from the calibration text (W4A4: Blackwell tensor cores)")

    def weights_after(self) -> WeightForm:
        return "quantized"

    @property
    def label(self) -> str:
        """A short name for tables: `nvfp4 a16` or `nvfp4 a4`."""
        return f"nvfp4 a{4 if self.activations == 'fp4' else 16}"

    def layer_error(self, name: str, out_features: int, in_features: int,
                    device_type: str) -> str | None:
        """Every row is cut into whole groups of 16 (what the format and the kernels take)."""
        if in_features % GROUP:
            return (f"nvfp4 needs in_features a multiple of {GROUP}; {name} has {in_features}: "
                    "exclude the layer")
        return None

    def placement_error(self, placement: str) -> str | None:
        return packed_checkpoint_placement_error(self.method, placement)


METHOD = Method(
    "nvfp4", NVFP4Config,
    "NVFP4: FP4 E2M1 weights in groups of 16 with FP8 scales and a global scale, activations "
    "16-bit or FP4; compressed-tensors nvfp4-pack-quantized checkpoint (vLLM, Blackwell GPUs)",
    experts="per_expert_checkpoint",
    stage="quantizing", section="quantization", charts=("quantization-error",),
    uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put nvfp4 last",
    formats=("compressors.io.compressed_tensors:FORMAT",))
