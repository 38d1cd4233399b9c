"""Per-layer choices written back as a step's fields (torch-free).

The goal-driven search gives each layer a level ("int8", "s0.5", ...) or leaves it "dense";
a method's `SearchSpace.step` writes that allocation as its own config. What those writers
share lives here, beside the fields they fill (`recipe.fields`): layer names compacted into a
few RE2 patterns, one per layer kind with the block indices as an alternation
(`^model\\.layers\\.(?:0|3|7)\\.mlp\\.down_proj$`), so a 210-layer choice fits the recipe's
limits on pattern count and length. Names are escaped by RE2 itself (`recipe.patterns`), the
engine the recipe is validated and matched with, so what a writer produces always validates.
"""

from __future__ import annotations

import re
from collections import defaultdict

from compressors.recipe.fields import MAX_LAYER_PATTERNS, MAX_REGEX_LENGTH
from compressors.recipe.patterns import escape

DENSE = "dense"  # the level of a layer the allocation leaves as it is
SPARSITY_PREFIX = "s"  # pruning levels are "s<fraction>": "s0.5" prunes half of each row

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


def only_level(choices: dict[str, str]) -> str | None:
    """The one level besides dense in `choices` (None: every layer stays dense). For methods
    with one level per step (`SearchSpace.mixed_levels` False), whose allocations never mix."""
    levels = {level for level in choices.values() if level != DENSE}
    if len(levels) > 1:
        raise ValueError(f"one level per step, got {sorted(levels)}")
    return levels.pop() if levels else None


def layer_selection(choices: dict[str, str], level: str) -> dict[str, list[str]]:
    """The `include` or `exclude` field (whichever is shorter) selecting exactly the layers
    at `level`; empty when every layer is at it (the step's default selection)."""
    chosen = [name for name, lv in choices.items() if lv == level]
    others = [name for name, lv in choices.items() if lv != level]
    if not others:
        return {}
    include, exclude = layer_patterns(chosen), layer_patterns(others)
    if sum(map(len, exclude)) < sum(map(len, include)):
        return {"exclude": exclude}
    return {"include": include}


def level_sparsity(level: str) -> float:
    """"s0.5" -> 0.5; dense -> 0."""
    return 0.0 if level == DENSE else float(level.removeprefix(SPARSITY_PREFIX))


def sparsity_patterns(choices: dict[str, str]) -> dict[str, float]:
    """Per-layer pruning levels as a `layer_sparsity` mapping (pattern -> sparsity); dense
    layers are left out (a step writes `sparsity: 0` for them). Empty: nothing is pruned."""
    by_level: dict[str, list[str]] = defaultdict(list)
    for name, level in choices.items():
        if level != DENSE:
            by_level[level].append(name)
    return {pattern: level_sparsity(level) for level, names in sorted(by_level.items())
            for pattern in layer_patterns(names)}
