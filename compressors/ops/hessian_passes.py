"""How many layer Hessians one calibration pass over a block may hold: the passes' layers.

SparseGPT and GPTQ accumulate one `in × in` float64 sum per layer while a block runs on the
calibration inputs (`ops.hessian`). A dense block has a handful of layers; a mixture-of-experts
block has the matrices of every expert: the 128 experts of a Qwen3-30B-A3B block (gate, up and
down of each, hidden 2048, expert width 768) are 8.6 GiB of sums, more than the block itself.
So the engine splits such a block's layers into passes, each one run of the block over its
inputs (`BlockContext.hessian_passes`): the dense layers (attention, shared experts, whatever
else is chosen) first, then whole experts (an expert's matrices stay together: gate and up read
one input, whose product is computed once) as long as the pass's sums fit `PASS_BYTES`. A
block whose sums fit at once, every dense block among them, is one pass, as before.

Torch-free and keyed by anything: the engine groups its layers by name, and the memory
estimate (`memory.py`) groups the widths it reads from the checkpoint's headers with the same
rule, so the estimate counts the largest pass, which is what the engine holds.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# float64 sums one pass may hold (a block's dense layers share the first whatever theirs are):
# 1 GiB keeps a 128-expert block of hidden 2048 to ten passes (each a forward of the block)
# while the Hessian memory stays under the size of such a block in bf16 (1.2 GB).
PASS_BYTES = 1 << 30


def sum_bytes(width: int) -> int:
    """One layer's `XᵀX` sum: `in × in` float64."""
    return 8 * width * width


def hessian_passes(dense: Mapping[K, int], experts: Sequence[Mapping[K, int]],
                   budget: int | None = None) -> list[list[K]]:
    """The layers of each pass: `dense` ({layer: in_features}) all in the first; then each
    expert's layers ({layer: in_features}, one mapping per expert, in order) added to the
    current pass while its sums stay within `budget` (default `PASS_BYTES`, read when called),
    else to a new one. A pass holds at least one expert even if that expert alone is larger.
    """
    limit = PASS_BYTES if budget is None else budget
    passes: list[list[K]] = [list(dense)]
    used = sum(sum_bytes(width) for width in dense.values())
    for expert in experts:
        size = sum(sum_bytes(width) for width in expert.values())
        if passes[-1] and used + size > limit:
            passes.append([])
            used = 0
        passes[-1].extend(expert)
        used += size
    return [layers for layers in passes if layers]
