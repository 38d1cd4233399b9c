"""The `rtn` step's settings (torch-free): the grid fields GPTQ has, without its Hessian."""

from __future__ import annotations

from typing import Literal

from compressors.methods.gptq.config import WeightGridConfig


class RTNConfig(WeightGridConfig):
    """Round-to-nearest integer weights in groups: the data-free baseline GPTQ is compared
    with, in the same compressed-tensors format."""

    method: Literal["rtn"] = "rtn"
