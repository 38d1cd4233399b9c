"""The `fp8` step's settings (torch-free): FP8 E4M3 weights per output channel or per 128×128
block, FP8 activations dynamic per token (block: per 128-value group) or static per tensor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import LayerSelection
from compressors.recipe.step import StepConfig, WeightForm, packed_checkpoint_placement_error

BLOCK = 128  # FP8_BLOCK's weight blocks and activation groups (ops.float_quant.FP8_BLOCK)


class Fp8Config(StepConfig, LayerSelection):
    """FP8 E4M3 weights and activations (llm-compressor's FP8_DYNAMIC and FP8_BLOCK schemes):
    round-to-nearest, no calibration for the dynamic forms. The evaluation after it runs with
    the activations quantized the way vLLM will quantize them (simulated on CPU)."""

    method: Literal["fp8"] = "fp8"
    weights: Literal["channel", "block"] = Field(
        "channel", description="one scale per output channel (FP8_DYNAMIC), or per 128×128 "
        "block (FP8_BLOCK: every selected layer's in_features must be a multiple of 128)")
    activations: Literal["dynamic", "static"] = Field(
        "dynamic", description="dynamic: each token's inputs get their own scale at inference "
        "(block weights: each group of 128 values of a token), no calibration; static: one "
        "scale per layer from the calibration inputs' largest magnitude (the step reads the "
        "calibration text; channel weights only)")

    @model_validator(mode="after")
    def _served(self) -> Fp8Config:
        if self.weights == "block" and self.activations == "static":
            raise ValueError("activations: static is not offered with weights: block (vLLM's "
                             "block kernels quantize activations per token group, dynamically)")
        return self

    def weights_after(self) -> WeightForm:
        return "quantized"

    @property
    def label(self) -> str:
        """A short name for tables: `fp8 channel dynamic`, `fp8 block dynamic`, ..."""
        return f"fp8 {self.weights} {self.activations}"

    def layer_error(self, name: str, out_features: int, in_features: int,
                    device_type: str) -> str | None:
        """Block weights come with activations in groups of 128 values of a token: a layer
        whose width is not a multiple of 128 has no such groups (compressed-tensors and vLLM
        refuse it)."""
        if self.weights == "block" and in_features % BLOCK:
            return (f"weights: block needs in_features a multiple of {BLOCK}; {name} has "
                    f"{in_features}: use weights: channel or exclude the layer")
        return None

    def placement_error(self, placement: str) -> str | None:
        return packed_checkpoint_placement_error(self.method, placement)


METHOD = Method(
    "fp8", Fp8Config,
    "FP8 E4M3 weights (per channel or 128×128 block) with FP8 activations, dynamic per token "
    "or static; compressed-tensors float-quantized checkpoint (vLLM, Ada/Hopper GPUs)",
    experts="per_expert_checkpoint",
    stage="quantizing", section="quantization", charts=("quantization-error",),
    uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put fp8 last",
    formats=("compressors.io.compressed_tensors:FORMAT",),
    search=SearchSpace(
        ("fp8",), mixed_levels=False,
        perturb="compressors.methods.fp8.search:perturb",
        step="compressors.methods.fp8.search:step",
        layer_bytes="compressors.methods.fp8.search:layer_bytes",
        note="FP8 E4M3 per output channel with dynamic per-token FP8 activations; the "
             "sensitivity pass rounds the weights only, the verification runs the step with "
             "its activations quantized"))
