"""The `w8a8` step's settings (torch-free): SmoothQuant's strength, then which quantizer
rounds the int8 per-channel weights; the activations are int8, dynamic per token."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import LayerSelection
from compressors.recipe.step import (
    MemoryNeeds,
    StepConfig,
    WeightForm,
    packed_checkpoint_placement_error,
)


class W8A8Config(StepConfig, LayerSelection):
    """INT8 W8A8 (Xiao et al. 2023, SmoothQuant): each layer's activation outliers are moved
    into its weights by per-channel scales folded into the op before it (the model computes
    the same function), then the weights are rounded to int8 with one scale per output
    channel (GPTQ by default) and the layers' inputs are quantized to int8 per token at
    inference. The evaluation after it runs with those inputs quantized (simulated on CPU);
    needs calibration text."""

    method: Literal["w8a8"] = "w8a8"
    alpha: float = Field(
        0.8, ge=0.0, le=1.0,
        description="smoothing strength in [0, 1]: s_j = max|X_j|^alpha / max|W_j|^(1-alpha) "
        "(0: no smoothing; 0.8: llm-compressor's W8A8 example; higher moves more of the "
        "activations' range into the weights)")
    quantizer: Literal["gptq", "rtn"] = Field(
        "gptq", description="how the int8 weights are rounded: gptq (Hessian error feedback, "
        "reads the calibration text again) or rtn (round to nearest)")
    dampening: float = Field(
        0.01, ge=0.0, le=10.0,
        description="gptq only: fraction of the mean Hessian diagonal added to it, in [0, 10]")

    def weights_after(self) -> WeightForm:
        return "quantized"

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """Round-to-nearest holds no Hessians."""
        return declared if self.quantizer == "gptq" else replace(
            declared, hessians=False, kept_hessians=False)

    def placement_error(self, placement: str) -> str | None:
        return packed_checkpoint_placement_error(self.method, placement)

    @property
    def label(self) -> str:
        """A short name for tables: `w8a8 smoothquant 0.8 + gptq`."""
        return f"w8a8 smoothquant {self.alpha:g} + {self.quantizer}"


METHOD = Method(
    "w8a8", W8A8Config,
    "INT8 W8A8: SmoothQuant scales folded into the preceding ops, int8 per-channel weights "
    "(GPTQ or RTN), int8 activations dynamic per token (Xiao et al. 2023); "
    "compressed-tensors int-quantized checkpoint (vLLM, Turing GPUs and newer)",
    experts="per_expert_checkpoint",
    stage="quantizing", needs_calibration=True, section="quantization",
    charts=("quantization-error", "smoothing-scales"), uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put w8a8 last",
    memory=MemoryNeeds(hessians=True, kept_hessians=True),
    formats=("compressors.io.compressed_tensors:FORMAT",),
    search=SearchSpace(
        ("int8",), mixed_levels=False,
        perturb="compressors.methods.w8a8.search:perturb",
        step="compressors.methods.w8a8.search:step",
        layer_bytes="compressors.methods.w8a8.search:layer_bytes",
        note="int8 per-channel weights with int8 activations per token after SmoothQuant; "
             "the sensitivity pass rounds the weights only (no smoothing, float inputs), the "
             "verification runs the step with its activations quantized"))
