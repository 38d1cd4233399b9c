"""SparseGPT's pure tensor math (Frantar & Alistarh, 2023): no modules, no hooks.

Given one layer's weight `W [out, in]` and the Hessian of its reconstruction loss
`H = 2 X Xᵀ / n` (`X [in, tokens]` the layer's calibration inputs), prune `W` and update the
weights that remain so that `Ŵ X` stays close to `W X`. The algorithm follows the reference
`SparseGPT.fasterprune`:

1. Inputs that never fire (`H_jj == 0`) are *dead*: their weights are zeroed and `H_jj := 1`.
2. Dampening and the upper Cholesky factor `U` of `H⁻¹` come from `ops.hessian` (shared
   with GPTQ and whitened SVD).
3. Columns are processed left to right in blocks of `blocksize`. At the start of each block the
   mask is chosen *adaptively* from the current (already updated) weights by the OBS saliency
   `w² / U_qq²`; N:M patterns choose theirs at the start of every group of M columns. Each
   column is then zeroed where masked and its error is spread over the remaining columns of the
   block (`W[:, q:] -= e · U[q, q:]`), then lazily over the later blocks.

Exactness of the sparsity (a deliberate refinement of the reference, which keeps every score
`<=` a per-block threshold and so may prune a few extra weights on ties):

- `scope="block"` (the reference's choice): in each column block the lowest scores are taken
  across *all rows* of the block. Block `[c0, c1)` prunes exactly
  `int(rows·c1·s) - int(rows·c0·s)` weights, so the layer as a whole prunes exactly
  `int(rows·in·s)` — the same count as `masks.matrix_mask`. Individual rows vary.
- `scope="row"`: each row of block `[c0, c1)` prunes exactly `int(c1·s) - int(c0·s)` weights,
  so every row ends with exactly `int(in·s)` zeros — the same counts as `masks.row_mask`.
- N:M: exactly `M - N` zeros in every group of M consecutive inputs of every row.

The only way to end with *more* zeros than asked is weights that were already zero (dead
inputs, or an earlier pruning step): they score 0, are chosen first and stay zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compressors.ops.hessian import HessianFactor, factor_hessian, one_thread


@dataclass(frozen=True)
class PruneStats:
    """What one layer's pruning did; goes into the step report."""

    loss: float  # OBS estimate of the added squared error, sum_q (w_q - ŵ_q)² / (2 U_qq²)
    dampening: float  # relative dampening actually used (>= the configured one)
    attempts: int  # Cholesky attempts; > 1 means the fallback was needed
    dead_inputs: int  # inputs with zero Hessian diagonal (never active on calibration data)
    sparsity: float  # fraction of zeros in the pruned weight


def _exact_lowest(scores: torch.Tensor, count: int, per_row: bool) -> torch.Tensor:
    """Boolean *prune* mask of the `count` lowest scores (per row, or over the whole block)."""
    prune = torch.zeros_like(scores, dtype=torch.bool)
    if count <= 0:
        return prune
    if per_row:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :count]
        return prune.scatter_(1, order, True)
    # selection instead of a full sort (4-5x faster); ties at the threshold go to the lowest
    # positions, which is exactly what a stable sort's first `count` would be
    flat = scores.flatten()
    threshold = torch.kthvalue(flat, count).values
    chosen = flat < threshold
    ties = torch.nonzero(flat == threshold).squeeze(1)[: count - int(chosen.sum())]
    chosen[ties] = True
    return chosen.view(scores.shape)


def _block_prune_count(rows: int, start: int, end: int, sparsity: float, per_row: bool) -> int:
    """Telescoping counts: the blocks' counts add up to exactly `int(total · sparsity)`."""
    scale = 1 if per_row else rows
    return int(scale * end * sparsity) - int(scale * start * sparsity)


def _choose_nm(w1: torch.Tensor, diag: torch.Tensor, i: int, nm: tuple[int, int]) -> torch.Tensor:
    """Prune mask of group `[i, i+M)`: the M-N lowest `w² / U_qq²` of each row."""
    n, m = nm
    scores = w1[:, i : i + m] ** 2 / diag[i : i + m].unsqueeze(0) ** 2
    lowest = torch.sort(scores, dim=1, stable=True).indices[:, : m - n]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, True)


def _obs_block(
    w1: torch.Tensor,
    u1: torch.Tensor,
    prune1: torch.Tensor,
    nm: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one column block, updating `w1` in place; returns (pruned block, errors).

    `prune1` is the unstructured mask (for N:M it is filled here, one group of M at a time).
    Per column q: `e = (w_q - ŵ_q) / U_qq` (nonzero only where pruned), then
    `W[:, q:] -= e ⊗ U[q, q:]`, which leaves column q equal to ŵ_q. The loop holds only these
    two tensor ops, because Python overhead per column dominates on small layers.
    """
    diag = torch.diagonal(u1)
    errors = torch.zeros(w1.shape[1], w1.shape[0], dtype=w1.dtype, device=w1.device)
    scale1 = prune1.to(w1.dtype) / diag.unsqueeze(0)
    for i in range(w1.shape[1]):
        if nm is not None and i % nm[1] == 0:
            group = _choose_nm(w1, diag, i, nm)
            prune1[:, i : i + nm[1]] = group
            scale1[:, i : i + nm[1]] = group.to(w1.dtype) / diag[i : i + nm[1]].unsqueeze(0)
        err = torch.mul(w1[:, i], scale1[:, i], out=errors[i])
        w1[:, i:].addr_(err, u1[i, i:], alpha=-1.0)
    # exact zeros where pruned (the update leaves them at rounding level), updated weights kept
    return w1.masked_fill_(prune1, 0.0), errors.T


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor | HessianFactor,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    dampening: float = 0.01,
    scope: str = "block",
) -> tuple[torch.Tensor, PruneStats]:
    """Prune `weight [out, in]` with Hessian `hessian [in, in]`; returns (new float32 W, stats).

    `nm=(N, M)` keeps N of every M inputs (then `sparsity` is ignored); otherwise `sparsity`
    is the fraction to prune, counted per layer (`scope="block"`) or per row (`scope="row"`).
    `hessian` may be a `HessianFactor` already computed (then `dampening` is not used).
    """
    cols = weight.shape[1]
    factor = hessian if isinstance(hessian, HessianFactor) else None
    _check_args(factor.upper if factor else hessian, cols, sparsity, nm, blocksize, scope)
    factor = factor or factor_hessian(hessian, dampening)
    # contiguous even when `weight` is a transposed view (GPT-2 Conv1D): row ops stay fast
    w = weight.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    w[:, factor.dead] = 0.0
    with one_thread():
        w, loss = _prune_columns(w, factor.upper, sparsity, nm, blocksize, scope == "row")
    zeros = float((w == 0).sum()) / w.numel()
    stats = PruneStats(loss, factor.dampening, factor.attempts, int(factor.dead.sum()), zeros)
    return w, stats


def _prune_columns(
    w: torch.Tensor, u: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
    blocksize: int, per_row: bool,
) -> tuple[torch.Tensor, float]:
    """The blocked OBS sweep over the columns of `w` (modified in place); returns (w, loss)."""
    rows, cols = w.shape
    loss = torch.zeros(rows, dtype=torch.float32, device=w.device)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        w1 = w[:, start:end].clone()
        u1 = u[start:end, start:end]
        prune1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            scores = w1**2 / torch.diagonal(u1).unsqueeze(0) ** 2
            count = _block_prune_count(rows, start, end, sparsity, per_row)
            prune1 = _exact_lowest(scores, count, per_row)
        q1, err1 = _obs_block(w1, u1, prune1, nm)
        w[:, start:end] = q1
        loss += err1.pow(2).sum(dim=1) / 2  # (w_q - ŵ_q)² / U_qq² = e_q²
        w[:, end:] -= err1 @ u[start:end, end:]
    return w, float(loss.sum())


def _check_args(
    hessian: torch.Tensor, cols: int, sparsity: float, nm: tuple[int, int] | None,
    blocksize: int, scope: str,
) -> None:
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian: shape {tuple(hessian.shape)} must be ({cols}, {cols})")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: {sparsity} must be in [0, 1)")
    if blocksize < 1:
        raise ValueError(f"blocksize: {blocksize} must be >= 1")
    if scope not in ("block", "row"):
        raise ValueError(f"scope: {scope!r} must be 'block' or 'row'")
    if nm is not None:
        n, m = nm
        if not 1 <= n < m:
            raise ValueError(f"pattern {n}:{m}: need 1 <= N < M")
        if cols % m or blocksize % m:
            raise ValueError(
                f"pattern {n}:{m}: in_features ({cols}) and blocksize ({blocksize}) must be "
                f"multiples of M ({m})"
            )


def reconstruction_error(
    weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor
) -> float:
    """`‖W X − Ŵ X‖_F` for inputs `[tokens, in]`: what SparseGPT minimises (for tests, bench)."""
    diff = (weight.float() - pruned.float()) @ inputs.float().T
    return float(torch.linalg.norm(diff))
