"""Token windows follow the evaluation protocol exactly."""

from __future__ import annotations

import pytest
import torch

from compressors.engine.windows import random_windows, sequential_windows, tokenize
from compressors.recipe.text import load_text, load_text_parts


def test_random_windows_follow_protocol_draws():
    tokens = torch.arange(10_000)
    windows = random_windows(tokens, samples=5, seqlen=64, seed=0)
    torch.manual_seed(0)
    for row in windows:
        start = int(torch.randint(0, 10_000 - 64, (1,)).item())
        assert torch.equal(row, tokens[start : start + 64])


def test_random_windows_reproducible_and_seeded():
    tokens = torch.arange(5000)
    assert torch.equal(random_windows(tokens, 4, 32, 0), random_windows(tokens, 4, 32, 0))
    assert not torch.equal(random_windows(tokens, 4, 32, 0), random_windows(tokens, 4, 32, 1))


def test_sequential_windows_non_overlapping_prefix():
    tokens = torch.arange(1000)
    windows = sequential_windows(tokens, windows=3, seqlen=100)
    assert windows.shape == (3, 100)
    assert torch.equal(windows.flatten(), tokens[:300])
    assert sequential_windows(tokens, windows=50, seqlen=100).shape == (10, 100)


def test_short_text_errors():
    with pytest.raises(ValueError, match="seqlen"):
        random_windows(torch.arange(10), 1, 64, 0)


@pytest.mark.parametrize("spec", ["sotu:1900-1999", "sotu:2000-"])
def test_piecewise_tokenization_equals_whole_text(spec, smollm2_tokenizer):
    whole = tokenize(smollm2_tokenizer, load_text(spec))
    pieces = tokenize(smollm2_tokenizer, load_text_parts(spec))
    assert torch.equal(whole, pieces)
