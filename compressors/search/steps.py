"""Writing an allocation back as ordinary recipe steps (what the user can re-submit).

Layer names are compacted into a few regexes, one per layer kind with the block indices as an
alternation (`^model\\.layers\\.(?:0|3|7)\\.mlp\\.down_proj$`), so a 210-layer choice fits the
recipe's limits on pattern count and length. Names are escaped by RE2 (`recipe.patterns`), the
engine the recipe is validated and matched with, so what the search writes always validates.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from compressors.recipe.fields import MAX_LAYER_PATTERNS, MAX_REGEX_LENGTH
from compressors.recipe.patterns import escape
from compressors.search.operations import GPTQ_BITS, level_sparsity

_INDEXED = re.compile(r"^(.*?\.)(\d+)(\..*)$")


def layer_patterns(names: list[str]) -> list[str]:
    """Regexes matching exactly `names` (anchored), grouped by the name around the first
    numeric component."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    singles: list[str] = []
    for name in names:
        match = _INDEXED.match(name)
        if match:
            groups[(match.group(1), match.group(3))].append(match.group(2))
        else:
            singles.append(name)
    patterns = [f"^{escape(name)}$" for name in singles]
    for (head, tail), indices in sorted(groups.items()):
        ordered = sorted(set(indices), key=int)
        alternation = ordered[0] if len(ordered) == 1 else f"(?:{'|'.join(ordered)})"
        patterns.append(f"^{escape(head)}{alternation}{escape(tail)}$")
    too_long = [p for p in patterns if len(p) > MAX_REGEX_LENGTH]
    if too_long or len(patterns) > MAX_LAYER_PATTERNS:
        raise ValueError(f"allocation needs {len(patterns)} layer patterns (limit "
                         f"{MAX_LAYER_PATTERNS}, each up to {MAX_REGEX_LENGTH} characters)")
    return patterns


def quantize_step(choices: dict[str, str], level: str) -> dict[str, Any] | None:
    """One bitsandbytes step: the layers at `level` are quantized, the rest left dense."""
    return _one_level_step({"method": "quantize", "bits": 8 if level == "int8" else 4},
                           choices, level)


def gptq_step(choices: dict[str, str], level: str) -> dict[str, Any] | None:
    """One GPTQ step: int8 per channel or int4 in auto-sized groups (`gptq_group_size`)."""
    head: dict[str, Any] = {"method": "gptq", "bits": GPTQ_BITS[level]}
    if level == "int8":
        head["group_size"] = -1
    return _one_level_step(head, choices, level)


def _one_level_step(head: dict[str, Any], choices: dict[str, str], level: str
                    ) -> dict[str, Any] | None:
    """`head` applied to the layers at `level`, the selection written as `include` or
    `exclude`, whichever is shorter; None when no layer is at `level`."""
    chosen = [n for n, lv in choices.items() if lv == level]
    dense = [n for n, lv in choices.items() if lv != level]
    if not chosen:
        return None
    step = dict(head)
    if dense:
        include, exclude = layer_patterns(chosen), layer_patterns(dense)
        if sum(map(len, exclude)) < sum(map(len, include)):
            step["exclude"] = exclude
        else:
            step["include"] = include
    return step


def pruning_step(method: str, choices: dict[str, str]) -> dict[str, Any] | None:
    """One pruning step with per-layer sparsity (`layer_sparsity`); dense layers get 0."""
    by_level: dict[str, list[str]] = defaultdict(list)
    for name, level in choices.items():
        by_level[level].append(name)
    if set(by_level) <= {"dense"}:
        return None
    layer_sparsity: dict[str, float] = {}
    for level, names in sorted(by_level.items()):
        if level == "dense":
            continue
        for pattern in layer_patterns(names):
            layer_sparsity[pattern] = level_sparsity(level)
    return {"method": method, "sparsity": 0.0, "layer_sparsity": layer_sparsity}
