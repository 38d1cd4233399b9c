"""LoRC (ZeroQuant-V2): approximate a layer's quantization error by a rank-r truncated SVD.

Pure tensor math, no model walking. For a weight W and its dequantized quantization
deq(Q(W)), the error E = W - deq(Q(W)) is factored as E ≈ up @ down with `up` [out, r] and
`down` [r, in]; at inference the layer computes deq(Q(W)) x + up (down x). The truncated SVD is
the best rank-r approximation in Frobenius norm (Eckart–Young), so the corrected weight is never
further from W than the plain quantized one.
"""

from __future__ import annotations

import torch

FACTOR_DTYPE = torch.float16  # ZeroQuant-V2 keeps the factors in 16-bit


def low_rank_factors(
    error: torch.Tensor, rank: int, dtype: torch.dtype = FACTOR_DTYPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r], down [r, in]) with up @ down the best rank-r approximation of `error`.

    The singular values are split evenly (sqrt on each side) so both factors have similar
    magnitudes, which keeps 16-bit storage accurate. `rank` is clipped to min(out, in).
    """
    if error.dim() != 2:
        raise ValueError(f"error must be a matrix, got shape {tuple(error.shape)}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    rank = min(rank, *error.shape)
    u, s, vh = torch.linalg.svd(error.float(), full_matrices=False)
    root = s[:rank].sqrt()
    up = u[:, :rank] * root
    down = root[:, None] * vh[:rank]
    return up.to(dtype).contiguous(), down.to(dtype).contiguous()


def corrected(dequantized: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """The effective weight deq(Q(W)) + up @ down, in float32."""
    return dequantized.float() + up.float() @ down.float()


def relative_error(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """‖reference - approximation‖_F / ‖reference‖_F."""
    reference = reference.float()
    denominator = torch.linalg.norm(reference)
    if denominator == 0:
        return float(torch.linalg.norm(approximation.float()))
    return float(torch.linalg.norm(reference - approximation.float()) / denominator)


def factor_bytes(up: torch.Tensor, down: torch.Tensor) -> int:
    return up.numel() * up.element_size() + down.numel() * down.element_size()
