"""The `gptq` and `rtn` steps' settings (torch-free).

Both write integer weights in groups (compressed-tensors pack-quantized, W4A16 / W8A16), so
they share the grid fields; GPTQ adds what its Hessian sweep needs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from compressors.recipe.fields import LayerSelection, StepConfig, WeightForm

GroupSize = Literal[-1, 32, 64, 128, 256]


class WeightGridConfig(StepConfig, LayerSelection):
    """Integer weight-only quantization of Linear layers, one scale per group of inputs.

    Layers are chosen like every other step's (`include` / `exclude`; default: every Linear in
    the transformer blocks, never embeddings or the LM head). Runs last: only evaluation may
    follow. Pruned zeros stay exactly zero (zero is always on the grid).
    """

    bits: Literal[4, 8] = Field(4, description="bits per weight code: 4 (W4A16) or 8 (W8A16)")
    group_size: GroupSize | None = Field(
        None, description="inputs per scale: 32/64/128/256 (must divide every targeted layer's "
        "in_features, else the job fails naming the layer), -1 one scale per output channel, "
        "unset (auto): 128 where it divides a layer's width, else the largest power of two "
        "below 128 that does (SmolLM2's 576 -> 64), per channel if that is under 32")
    symmetric: bool = Field(
        True, description="symmetric grid (zero point 0, what vLLM's W4A16/W8A16 kernels "
        "take); false (a zero point per group) is refused for now: compressed-tensors 0.20 "
        "reloads packed zero points with the wrong shape, so such a checkpoint would not load")
    clip_search: bool = Field(
        True, description="choose each group's scale by searching shrink factors of its range "
        "for the least error (GPTQ: weighted by the Hessian diagonal); false: plain min-max")
    scale_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="dtype the scales are stored in (float16: what vLLM's kernels "
        "take)")

    @field_validator("symmetric")
    @classmethod
    def _loadable(cls, value: bool) -> bool:
        if not value:
            raise ValueError("false is not offered: compressed-tensors 0.20 reloads packed "
                             "asymmetric zero points with the wrong shape (the checkpoint "
                             "would not load); use symmetric: true")
        return value

    def weights_after(self) -> WeightForm:
        return "quantized"

    @property
    def label(self) -> str:
        """A short name for tables: `gptq w4 g64`, `rtn w8 ch`, ..."""
        group = "auto" if self.group_size is None else (
            "ch" if self.group_size == -1 else f"g{self.group_size}")
        return f"{self.method} w{self.bits} {group}" + ("" if self.symmetric else " asym")


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
