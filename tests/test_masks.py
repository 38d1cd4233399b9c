"""Exactness of the mask math: every row, every N:M group, ties resolved by position."""

from __future__ import annotations

import pytest
import torch

from compressors.ops.masks import (
    choose_mask,
    matrix_mask,
    nm_groups_valid,
    nm_mask,
    row_mask,
    wanda_scores,
)


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.999])
def test_row_mask_prunes_exact_count_in_every_row(sparsity):
    scores = torch.randn(37, 101)
    keep = row_mask(scores, sparsity)
    pruned_per_row = (~keep).sum(dim=1)
    assert torch.all(pruned_per_row == int(101 * sparsity))


def test_row_mask_removes_the_lowest_scores():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.1, 0.9, 0.2]])
    keep = row_mask(scores, 0.5)
    assert keep.tolist() == [[True, False, True, False], [True, False, True, False]]


def test_matrix_mask_exact_and_global():
    scores = torch.tensor([[10.0, 9.0, 8.0], [1.0, 2.0, 3.0]])
    keep = matrix_mask(scores, 0.5)
    assert keep.tolist() == [[True, True, True], [False, False, False]]
    big = matrix_mask(torch.randn(64, 48), 0.3)
    assert int((~big).sum()) == int(64 * 48 * 0.3)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4), (3, 8), (1, 2)])
def test_nm_mask_keeps_exactly_n_per_group(n, m):
    scores = torch.randn(16, 8 * m)
    keep = nm_mask(scores, n, m)
    groups = keep.reshape(16, 8, m).sum(-1)
    assert torch.all(groups == n)
    weight = torch.randn(16, 8 * m) * keep
    assert nm_groups_valid(weight, n, m)


def test_nm_mask_keeps_largest_in_group():
    scores = torch.tensor([[1.0, 5.0, 3.0, 2.0, 9.0, 0.0, 7.0, 8.0]])
    assert nm_mask(scores, 2, 4).tolist() == [[False, True, True, False,
                                               True, False, False, True]]


def test_nm_requires_divisible_width():
    with pytest.raises(ValueError, match="divisible"):
        nm_mask(torch.randn(2, 6), 2, 4)


def test_ties_broken_by_position_reproducibly():
    scores = torch.ones(3, 8)
    first, second = row_mask(scores, 0.5), row_mask(scores, 0.5)
    assert torch.equal(first, second)
    assert torch.all((~first).sum(1) == 4)


def test_choose_mask_dispatch():
    scores = torch.randn(8, 16)
    assert torch.equal(choose_mask(scores, 0.5, (2, 4)), nm_mask(scores, 2, 4))
    assert torch.equal(choose_mask(scores, 0.25, None), row_mask(scores, 0.25))
    assert torch.equal(choose_mask(scores, 0.25, None, per_row=False), matrix_mask(scores, 0.25))


def test_wanda_scores_formula():
    weight = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    sq_norms = torch.tensor([16.0, 1.0])
    assert wanda_scores(weight, sq_norms).tolist() == [[4.0, 2.0], [12.0, 0.5]]
