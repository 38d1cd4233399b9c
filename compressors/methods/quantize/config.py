"""The `quantize` recipe step's parameters: bitsandbytes int8 / nf4 / fp4, plus optional LoRC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from compressors.methods.method import Method, SearchSpace
from compressors.recipe.fields import LayerSelection, int_choice, rename_deprecated
from compressors.recipe.step import MemoryNeeds, StepConfig, WeightForm

if TYPE_CHECKING:  # pragma: no cover
    import torch


BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)
CPU_4BIT_ROWS = 32  # bitsandbytes' 4-bit CPU matmul tiles out_features by 32


class QuantizeConfig(StepConfig, LayerSelection):
    """bitsandbytes weight quantization of Linear layers (LLM.int8, or 4-bit nf4/fp4).

    The layers are chosen like every other step's (`include` / `exclude`; `skip` is the
    deprecated name of `exclude`): by default every Linear-like layer in the transformer
    blocks, never embeddings or the LM head. Runs last: packed weights cannot be edited.
    """

    method: Literal["quantize"] = "quantize"
    bits: int_choice(4, 8) = Field(4, description="8: LLM.int8 with outliers; 4: nf4 / fp4 blocks")
    threshold: float = Field(
        6.0, ge=0.0, le=1e4,
        description="bits 8 only: activation magnitude above which a column runs in 16-bit; "
        "0 turns outlier decomposition off",
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bits 4 only: the 4-bit code")
    double_quant: bool = Field(False, description="bits 4 only: quantize the block scales too")
    blocksize: int_choice(*BLOCKSIZES) = Field(
        64, description="bits 4 only: weights per scale; must divide every layer's in_features",
    )
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="bits 4 only: dtype of the matmul after dequantizing",
    )
    lorc_rank: int = Field(
        0, ge=0, le=4096,
        description="rank of the low-rank correction of each layer's quantization error "
        "(LoRC, ZeroQuant-V2); 0 turns it off",
    )

    @model_validator(mode="before")
    @classmethod
    def _skip_alias(cls, data: Any) -> Any:
        return rename_deprecated(data, "skip", "exclude")

    @model_validator(mode="after")
    def _four_bit_options_need_four_bits(self) -> QuantizeConfig:
        if self.bits == 8:
            changed = [
                name for name in ("quant_type", "double_quant", "blocksize", "compute_dtype")
                if getattr(self, name) != type(self).model_fields[name].default
            ]
            if changed:
                raise ValueError(f"{', '.join(changed)}: only apply with bits: 4 (got bits: 8)")
        return self

    def weights_after(self) -> WeightForm:
        return "quantized"

    def layer_error(self, name: str, out_features: int, in_features: int,
                    device_type: str) -> str | None:
        """4-bit blocks must tile each row (`blocksize` divides in_features), and
        bitsandbytes' 4-bit CPU kernel takes only layers whose out_features is a multiple of
        32 (it asserts, deep in a job, otherwise)."""
        if self.bits != 4:
            return None
        if in_features % self.blocksize:
            fits = [size for size in BLOCKSIZES if in_features % size == 0]
            advice = (f"use blocksize {fits[-1]}" if fits else "no blocksize bitsandbytes "
                      "offers divides it: exclude the layer")
            return (f"blocksize: {self.blocksize} does not divide in_features {in_features} of "
                    f"{name}; {advice}")
        if device_type == "cpu" and out_features % CPU_4BIT_ROWS:
            return (f"{name}: out_features {out_features} is not a multiple of "
                    f"{CPU_4BIT_ROWS}, which bitsandbytes' 4-bit CPU kernel needs; exclude "
                    "the layer, or run on a GPU worker")
        return None

    def memory_needs(self, declared: MemoryNeeds) -> MemoryNeeds:
        """The model is rebuilt at `bits` per block weight (`MemoryNeeds.reload_bits`)."""
        from dataclasses import replace

        return replace(declared, reload_bits=self.bits)

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        import torch  # here, not at the top: the API validates this config without torch

        return getattr(torch, self.compute_dtype)

    @property
    def label(self) -> str:
        """A short name for tables: int8, nf4, nf4+dq, nf4+lorc16, ..."""
        name = "int8" if self.bits == 8 else self.quant_type
        if self.bits == 4 and self.double_quant:
            name += "+dq"
        if self.lorc_rank:
            name += f"+lorc{self.lorc_rank}"
        return name


METHOD = Method(
    "quantize", QuantizeConfig,
    "bitsandbytes int8 (LLM.int8) / nf4 / fp4 weights, optional LoRC error "
    "correction",
    stage="quantizing", section="quantization",
    leaves_hint="quantized weights are final: put quantize last",
    memory=MemoryNeeds(reload=True),
    formats=("compressors.methods.quantize.checkpoint:FORMAT",),
    layer_kinds=("compressors.methods.quantize.layers:LAYER_KIND",),
    search=SearchSpace(
        ("int8", "nf4"), mixed_levels=False,
        perturb="compressors.methods.quantize.search:perturb",
        step="compressors.methods.quantize.search:step",
        layer_bytes="compressors.methods.quantize.search:layer_bytes",
        note="bitsandbytes: one bits value per step, so per layer int8|dense or nf4|dense; "
             "layers kept dense are excluded from the step"))
