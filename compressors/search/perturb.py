"""How each candidate operation changes one weight matrix, for the sensitivity pass.

Pure tensor math (no modules): `[out, in]` float weight in, perturbed float weight out. These are
the search's proxies of what the real step does; the verification runs the real steps.
"""

from __future__ import annotations

import torch

from compressors.ops.int_grid import Grid, rtn_quantize
from compressors.ops.masks import row_mask, wanda_scores
from compressors.search.operations import GPTQ_BITS, NF4_BLOCK, gptq_group_size, level_sparsity


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


def bnb_roundtrip(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
                  ) -> torch.Tensor:
    if level == "int8":
        return int8_rows(weight.float())
    if level == "nf4":
        return nf4_blocks(weight)
    raise ValueError(f"quantize: unknown level {level!r}")


def grid_roundtrip(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
                   ) -> torch.Tensor:
    """Round-to-nearest on the grid the search's gptq step writes (symmetric, float16 scales,
    `gptq_group_size`): what GPTQ starts from before its error feedback lowers the error."""
    if level not in GPTQ_BITS:
        raise ValueError(f"gptq: unknown level {level!r}")
    grid = Grid(GPTQ_BITS[level], gptq_group_size(level, weight.shape[1]))
    return rtn_quantize(weight, grid, search=False).dense()


def wanda_prune(weight: torch.Tensor, level: str, input_sq_norms: torch.Tensor | None
                ) -> torch.Tensor:
    """Wanda's row-wise mask at the level's sparsity (magnitude when no norms are given)."""
    if input_sq_norms is None:
        return magnitude_prune(weight, level, None)
    keep = row_mask(wanda_scores(weight, input_sq_norms), level_sparsity(level))
    return weight.float() * keep


def magnitude_prune(weight: torch.Tensor, level: str, _input_sq_norms: torch.Tensor | None
                    ) -> torch.Tensor:
    keep = row_mask(weight.abs().float(), level_sparsity(level))
    return weight.float() * keep
