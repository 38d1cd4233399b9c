"""How the goal-driven search uses bitsandbytes on one layer (`METHOD.search`).

Levels "int8" (LLM.int8's row-wise absmax codes) and "nf4" (4-bit codes in blocks of 64).
A quantize step takes one `bits` for all its layers, so each level is its own family: a
layer is at that level or dense, and the layers left dense are excluded from the step.
"""

from __future__ import annotations

import torch

from compressors.methods.quantize.config import QuantizeConfig
from compressors.recipe.per_layer import layer_selection, only_level

NF4_BLOCK = 64  # transformers' bitsandbytes 4-bit block size (one fp32 absmax per block)
BITS = {"int8": 8, "nf4": 4}


def layer_bytes(level: str, rows: int, cols: int, _dtype: str) -> float:
    """Stored bytes of one `[rows, cols]` weight: int8 codes plus one fp32 scale per output
    row (SCB), or 4-bit codes plus one fp32 absmax per block."""
    numel = rows * cols
    if level == "int8":
        return numel + rows * 4
    if level == "nf4":
        return numel / 2 + numel / NF4_BLOCK * 4
    raise ValueError(f"quantize: unknown level {level!r}")


def perturb(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
            ) -> torch.Tensor:
    """The weight after a round trip through the level's format."""
    if level == "int8":
        return int8_rows(weight.float())
    if level == "nf4":
        return nf4_blocks(weight)
    raise ValueError(f"quantize: unknown level {level!r}")


def step(choices: dict[str, str]) -> QuantizeConfig | None:
    """One bitsandbytes step: the layers at the allocation's level quantized, the rest
    left dense."""
    level = only_level(choices)
    if level is None:
        return None
    return QuantizeConfig(method="quantize", bits=BITS[level], **layer_selection(choices, level))


def int8_rows(weight: torch.Tensor) -> torch.Tensor:
    """Row-wise absmax int8 round trip: LLM.int8's weight format without its outlier columns
    (which only lower the error), so a slight over-estimate of its error."""
    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(weight / scale).clamp_(-127, 127) * scale


def nf4_code() -> torch.Tensor:
    """The 16 nf4 values, taken from bitsandbytes (so the round trip matches its format)."""
    from bitsandbytes.functional import get_4bit_type

    return get_4bit_type("nf4", device="cpu").float()


def nf4_blocks(weight: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
    """nf4 round trip as bitsandbytes stores it: blocks of 64 consecutive weights (row-major),
    each scaled by its absmax, every weight rounded to the nearest code value. Written here in
    plain torch: bitsandbytes' CPU `quantize_4bit` takes ~30 s on one 576x1536 matrix."""
    code = nf4_code() if code is None else code
    flat = weight.float().reshape(-1, NF4_BLOCK)
    absmax = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    scaled = flat / absmax
    midpoints = (code[1:] + code[:-1]) / 2
    nearest = code[torch.bucketize(scaled, midpoints)]
    return (nearest * absmax).reshape(weight.shape)
