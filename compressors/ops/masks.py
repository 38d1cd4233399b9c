"""Pure tensor math for choosing which weights survive. No modules, no hooks.

Every function takes a score matrix `[out, in]` (higher = more important) and returns a boolean
*keep* mask of the same shape. Counts are exact: a row-wise mask at sparsity s removes exactly
`int(in * s)` entries from every row; an N:M mask keeps exactly N in every group of M.
Ties are broken by position (stable sort), so results are reproducible.
"""

from __future__ import annotations

import torch


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the `int(cols * sparsity)` lowest scores of every row."""
    cols = scores.shape[1]
    n_prune = int(cols * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune == 0:
        return keep
    order = torch.sort(scores, dim=1, stable=True).indices[:, :n_prune]
    keep.scatter_(1, order, False)
    return keep


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove the `int(numel * sparsity)` lowest scores of the whole matrix."""
    n_prune = int(scores.numel() * sparsity)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune:
        order = torch.sort(scores.flatten(), stable=True).indices[:n_prune]
        keep[order] = False
    return keep.view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores in every group of M consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"N:M pattern needs in_features ({cols}) divisible by M ({m})")
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices[..., : m - n]
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order, False)
    return keep.reshape(rows, cols)


def choose_mask(
    scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None, per_row: bool = True
) -> torch.Tensor:
    """Dispatch on pattern: N:M groups, else per-row or whole-matrix unstructured."""
    if nm is not None:
        return nm_mask(scores, *nm)
    return row_mask(scores, sparsity) if per_row else matrix_mask(scores, sparsity)


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's importance |W_ij| * ||X_j||_2, with `input_sq_norms[j] = sum_t X_tj^2`."""
    return weight.abs().float() * input_sq_norms.float().sqrt().unsqueeze(0)


def prune_rows(weight: torch.Tensor, sparsity: float,
               input_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
    """`weight` in float32 with the `int(cols * sparsity)` least important entries of every
    row set to zero: by Wanda's scores when the input norms are given, by magnitude otherwise.

    The pruning methods' stand-in for the search's sensitivity pass (no weight update, so an
    upper bound on SparseGPT's error); one function, since three methods share it.
    """
    scores = weight.abs().float() if input_sq_norms is None else wanda_scores(weight,
                                                                               input_sq_norms)
    return weight.float() * row_mask(scores, sparsity)


def nm_groups_valid(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every M-group of every row has at most N nonzeros."""
    rows, cols = weight.shape
    nonzero = (weight.reshape(rows, cols // m, m) != 0).sum(-1)
    return bool((nonzero <= n).all())
