"""The `awq` step's settings (torch-free): the integer-grid fields GPTQ and RTN share
(`recipe.fields.WeightGridConfig`), AWQ's scale search, and which quantizer rounds after it."""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import WeightGridConfig
from compressors.recipe.step import MemoryNeeds


class AWQConfig(WeightGridConfig):
    """AWQ (Lin et al. 2024): per-input-channel scales searched block by block on the
    calibration activations (the exponent of `mean|X|` that least changes the output of the
    module holding the layers once their scaled weights are rounded), folded into the op before
    the layers (the model computes the same function), then int4 (or int8) weights in groups
    rounded by RTN (default) or GPTQ; needs calibration text. With RTN each group's range is
    clipped by the same output error (`ops.clipping`), not by the weights' own: the scaled-up
    salient columns are what a weight-error clip would cut."""

    method: Literal["awq"] = "awq"
    quantizer: Literal["rtn", "gptq"] = Field(
        "rtn", description="how the scaled weights are rounded: rtn (round to nearest, AWQ's "
        "own) or gptq (Hessian error feedback, reads the calibration text again)")
    grid: int = Field(
        20, ge=2, le=100, description="points of the scale search per group of layers, in "
        "[2, 100] (exponents evenly spaced in [0, 1]; each runs the layers' module once over "
        "the calibration tokens)")
    scales: Literal["activations", "duo", "both"] = Field(
        "both", description="the scale family searched: activations (mean|X|^r), duo "
        "(mean|X|^r / mean|W|^(1-r), weights normalised per group) or both (half the grid "
        "each, as llm-compressor's duo_scaling='both')")
    objective: Literal["module", "layers"] = Field(
        "module", description="what the search minimises: module (the output error of the "
        "module holding the layers, e.g. the attention for q/k/v, run once per grid point: "
        "AWQ's) or layers (the layers' own output error, exact from their inputs' Gram "
        "matrix: no forward per point, tens of times cheaper)")
    clip_search: bool = Field(
        True, description="rtn: after the scales, each group's range is shrunk to the factor "
        "(of 20 in [0.55, 1]) whose rounding least changes the layer's output on the "
        "calibration tokens, and the weights clamped to it (AWQ's clipping); gptq: GPTQ's own "
        "search, weighted by the Hessian diagonal; false: plain min-max ranges")
    dampening: float = Field(
        0.01, ge=0.0, le=10.0,
        description="gptq only: fraction of the mean Hessian diagonal added to it, in [0, 10]")

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """Round-to-nearest holds no Hessians."""
        return declared if self.quantizer == "gptq" else replace(
            declared, hessians=False, kept_hessians=False)

    @property
    def label(self) -> str:
        """A short name for tables: `awq w4 g64 + rtn`."""
        return f"{super().label} + {self.quantizer}"


METHOD = Method(
    "awq", AWQConfig,
    "AWQ: activation-aware per-channel scales searched per block and folded into the "
    "preceding ops, then int4 weights in groups by RTN or GPTQ (Lin et al. 2024); "
    "compressed-tensors pack-quantized checkpoint",
    experts="per_expert_checkpoint",
    stage="quantizing", needs_calibration=True, section="quantization",
    charts=("quantization-error", "awq-search"), uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put awq last",
    memory=MemoryNeeds(hessians=True, kept_hessians=True),
    formats=("compressors.io.compressed_tensors:FORMAT",),
    search=SearchSpace(
        ("int4-awq",), mixed_levels=False,
        perturb="compressors.methods.awq.search:perturb",
        step="compressors.methods.awq.search:step",
        layer_bytes="compressors.methods.awq.search:layer_bytes",
        note="int4 in auto-sized groups after AWQ's scales; the sensitivity pass rounds the "
             "unscaled weights to nearest on the same grid (an upper bound on AWQ's error), "
             "the verification runs the step"))
