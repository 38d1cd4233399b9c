"""Text -> token windows, exactly as the evaluation protocol in DESIGN.md prescribes.

Calibration windows are drawn one at a time after `torch.manual_seed(seed)`, each starting at
`torch.randint(0, n_tokens - seqlen, (1,))`, so any implementation that follows the protocol
sees the same windows. Evaluation windows are the first `n` non-overlapping windows.
"""

from __future__ import annotations

import torch

from compressors import assets
from compressors.protocol import CalibrationConfig, EvaluationConfig


def tokenize(tokenizer, text: str | list[str]) -> torch.Tensor:
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


def calibration_windows(tokenizer, config: CalibrationConfig) -> torch.Tensor:
    tokens = tokenize(tokenizer, assets.load_text_parts(config.text))
    return random_windows(tokens, config.samples, config.seqlen, config.seed)


def evaluation_windows(tokenizer, config: EvaluationConfig) -> torch.Tensor:
    tokens = tokenize(tokenizer, assets.load_text_parts(config.text))
    return sequential_windows(tokens, config.windows, config.seqlen)
