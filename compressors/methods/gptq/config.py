"""The `gptq` step's settings (torch-free): the shared integer-grid fields
(`recipe.fields.WeightGridConfig`) and what GPTQ's Hessian sweep adds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import WeightGridConfig
from compressors.recipe.step import MemoryNeeds


class GPTQConfig(WeightGridConfig):
    """GPTQ (Frantar et al. 2022): quantize column by column from each layer's Hessian,
    spreading every column's rounding error over the columns not yet quantized; needs
    calibration text. Block k is quantized on inputs that passed through the already
    quantized blocks before it."""

    method: Literal["gptq"] = "gptq"
    act_order: bool = Field(
        True, description="quantize inputs by decreasing Hessian diagonal (activation order), "
        "with static groups so the checkpoint needs no permutation at load")
    dampening: float = Field(
        0.01, ge=0.0, le=10.0,
        description="fraction of the mean Hessian diagonal added to it, in [0, 10]; raised "
        "x10 automatically (and reported) if the Cholesky factorisation fails")
    blocksize: int = Field(
        128, ge=1, le=65536,
        description="columns per lazy-update block, in [1, 65536] (rounded up to a multiple "
        "of the group size)")


METHOD = Method(
    "gptq", GPTQConfig,
    "GPTQ: int4/int8 weights in groups from each layer's Hessian, error fed back "
    "column by column (Frantar et al. 2022); compressed-tensors checkpoint",
    experts="per_expert_checkpoint",
    stage="quantizing", needs_calibration=True, section="quantization",
    charts=("quantization-error",), uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put gptq last",
    memory=MemoryNeeds(hessians=True, kept_hessians=True),
    formats=("compressors.io.compressed_tensors:FORMAT",),
    search=SearchSpace(
        ("int8", "int4"), mixed_levels=False,
        perturb="compressors.methods.gptq.search:perturb",
        step="compressors.methods.gptq.search:step",
        layer_bytes="compressors.methods.gptq.search:layer_bytes",
        note="one bits value per step, like bitsandbytes: int8 per channel, int4 in groups "
             "(auto size); sensitivity measured with round-to-nearest on the same grid, an "
             "upper bound on GPTQ's error-fed result"))
