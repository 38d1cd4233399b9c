"""Training windows and the second evaluation text.

The second text must be of a *different kind* from the SOTU speeches the model retrains on, so
that adapting to political prose is not mistaken for recovering what pruning removed. The
default, `pydoc:topics`, is the Python language reference that CPython ships in
`pydoc_data/topics.py` (the text `help()` shows): technical English mixed with code, always
available offline, identical for a given Python version. Its topics are joined in sorted key
order with a blank line between them.
"""

from __future__ import annotations

import torch

from compressors import assets
from compressors.calibration import random_windows, sequential_windows, tokenize

PYDOC_TOPICS = "pydoc:topics"


def load_parts(spec: str) -> list[str]:
    """`pydoc:topics`, a built-in corpus (`sotu:...`) or a text file, as tokenizable pieces."""
    if spec == PYDOC_TOPICS:
        from pydoc_data.topics import topics

        return ["\n\n".join(topics[key] for key in sorted(topics))]
    return assets.load_text_parts(spec)


def training_windows(tokenizer, spec: str, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`[samples, seqlen]` windows at the protocol's seeded random starts."""
    return random_windows(tokenize(tokenizer, load_parts(spec)), samples, seqlen, seed)


def evaluation_windows(tokenizer, spec: str, windows: int, seqlen: int) -> torch.Tensor:
    """The first `windows` non-overlapping windows, as the protocol does for perplexity."""
    return sequential_windows(tokenize(tokenizer, load_parts(spec)), windows, seqlen)
