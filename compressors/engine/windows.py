"""Text -> token windows, exactly as the evaluation protocol (docs/evaluation.md) prescribes.

Calibration windows are drawn one at a time after `torch.manual_seed(seed)`, each starting at
`torch.randint(0, n_tokens - seqlen, (1,))`, so any implementation that follows the protocol
sees the same windows. Evaluation windows are the first `n` non-overlapping windows.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from compressors.recipe.protocol import CalibrationConfig, EvaluationConfig
from compressors.recipe.text import load_text_parts

_TOKENIZED: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
_TOKENIZED_ENTRIES = 4


def tokenize(tokenizer, text: str | list[str]) -> torch.Tensor:
    """All tokens of `text` as a 1-D LongTensor, without special tokens, remembered.

    Every run tokenizes its calibration corpus whole (the protocol's random starts range over
    all of it): 5 s of a tiny model's 7 s run for SOTU 1900-1999 with SmolLM2's tokenizer.
    A goal search, the test suite and a worker's next job on the same model ask again for
    the same text, so the last few results are kept, keyed by the text's and the
    tokenizer's content (not object identity: every load builds a new tokenizer object).
    """
    key = _cache_key(tokenizer, text)
    if key is not None and key in _TOKENIZED:
        _TOKENIZED.move_to_end(key)
        return _TOKENIZED[key].clone()
    tokens = _tokenize(tokenizer, text)
    if key is not None:
        _TOKENIZED[key] = tokens.clone()
        while len(_TOKENIZED) > _TOKENIZED_ENTRIES:
            _TOKENIZED.popitem(last=False)
    return tokens


def _cache_key(tokenizer, text: str | list[str]) -> tuple[str, str] | None:
    """(tokenizer content hash, text hash); None for tokenizers without a serializable
    backend (slow Python tokenizers), which are then not cached."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256()
    for part in [text] if isinstance(text, str) else text:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest(), digest.hexdigest()


def _tokenize(tokenizer, text: str | list[str]) -> torch.Tensor:
    """All tokens of `text` as a 1-D LongTensor, without special tokens.

    A fast tokenizer keeps offsets and token strings for every token, which for a 5 MB corpus
    costs most of a gigabyte at once; given pieces that start at whitespace after a word, a
    byte-level BPE tokenizer splits there anyway, so tokenizing piece by piece gives the same
    ids at a fraction of the peak memory. Other tokenizers get the joined text.
    """
    parts = [text] if isinstance(text, str) else text
    if len(parts) > 1 and not _splits_at_whitespace(tokenizer):
        parts = ["".join(parts)]
    ids: list[torch.Tensor] = []
    for part in parts:
        encoded = tokenizer(part, add_special_tokens=False, return_attention_mask=False)
        ids.append(torch.tensor(encoded["input_ids"], dtype=torch.long))
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long)


def _splits_at_whitespace(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pre = getattr(backend, "pre_tokenizer", None)
    return pre is not None and "ByteLevel" in repr(pre) and "use_regex=True" in repr(pre)


def random_windows(tokens: torch.Tensor, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`[samples, seqlen]` windows at protocol-defined random starts."""
    n_tokens = tokens.numel()
    if n_tokens <= seqlen:
        raise ValueError(f"calibration text has {n_tokens} tokens; need more than seqlen={seqlen}")
    torch.manual_seed(seed)
    windows = []
    for _ in range(samples):
        start = int(torch.randint(0, n_tokens - seqlen, (1,)).item())
        windows.append(tokens[start : start + seqlen])
    return torch.stack(windows)


def sequential_windows(tokens: torch.Tensor, windows: int, seqlen: int) -> torch.Tensor:
    """The first `windows` non-overlapping `[seqlen]` windows (fewer if the text is short)."""
    available = tokens.numel() // seqlen
    if available == 0:
        raise ValueError(f"evaluation text has {tokens.numel()} tokens; need at least {seqlen}")
    count = min(windows, available)
    return tokens[: count * seqlen].view(count, seqlen)


def text_random_windows(tokenizer, text: str, samples: int, seqlen: int, seed: int
                        ) -> torch.Tensor:
    """`[samples, seqlen]` windows of a text reference at the protocol's seeded random starts."""
    return random_windows(tokenize(tokenizer, load_text_parts(text)), samples, seqlen, seed)


def text_sequential_windows(tokenizer, text: str, windows: int, seqlen: int) -> torch.Tensor:
    """The first `windows` non-overlapping windows of a text reference."""
    return sequential_windows(tokenize(tokenizer, load_text_parts(text)), windows, seqlen)


def calibration_windows(tokenizer, config: CalibrationConfig) -> torch.Tensor:
    return text_random_windows(tokenizer, config.text, config.samples, config.seqlen,
                               config.seed)


def evaluation_windows(tokenizer, config: EvaluationConfig) -> torch.Tensor:
    return text_sequential_windows(tokenizer, config.text, config.windows, config.seqlen)
