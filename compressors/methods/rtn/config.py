"""The `rtn` step's settings (torch-free): the grid fields GPTQ has, without its Hessian."""

from __future__ import annotations

from typing import Literal

from compressors.methods.method import Method
from compressors.recipe.fields import WeightGridConfig


class RTNConfig(WeightGridConfig):
    """Round-to-nearest integer weights in groups: the data-free baseline GPTQ is compared
    with, in the same compressed-tensors format."""

    method: Literal["rtn"] = "rtn"


METHOD = Method(
    "rtn", RTNConfig,
    "round-to-nearest int4/int8 weights in groups (the GPTQ baseline); "
    "compressed-tensors checkpoint",
    experts="per_expert_checkpoint",
    stage="quantizing", section="quantization", charts=("quantization-error",),
    uses_masks=True, blockwise=True,
    leaves_hint="quantized weights are final: put rtn last",
    formats=("compressors.io.compressed_tensors:FORMAT",))
