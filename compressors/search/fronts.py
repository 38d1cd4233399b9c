"""The allocation phase: each family's predicted front, and the allocations worth verifying.

A family is (dtype, method, levels): a method whose step mixes levels across layers is one
family; a method with one level per step is one family per level, where each layer takes
that level or stays dense. What a level costs in bytes and what the sensitivity predicts it
costs in loss come from the method's `SearchSpace` (the registry) and the `Sensitivity`; the
knapsack math is `allocate`'s.
"""

from __future__ import annotations

import math

from compressors.methods import import_object, search_spaces
from compressors.recipe.per_layer import DENSE
from compressors.search.allocate import (
    Allocation,
    Option,
    best_within,
    lagrangian_front,
    smallest_within,
)
from compressors.search.goal import Goal
from compressors.search.sensitivity import Sensitivity

Fronts = dict[str, list[Allocation]]  # family name -> its front
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # one stored weight per dense dtype
MARGINS = (1.0, 0.75, 0.5)  # safety margins of the first verification round


def families_front(sens: Sensitivity, goal: Goal) -> Fronts:
    """Per (dtype, method[, level]) family, its Lagrangian front of predicted allocations."""
    fronts: Fronts = {}
    spaces = search_spaces()
    for dtype in goal.dtypes:
        fixed = sens.other_parameters * DTYPE_BYTES[dtype]
        for method in goal.shrinking_methods():
            space = spaces[method]
            groups = [space.levels] if space.mixed_levels else [(lv,) for lv in space.levels]
            for levels in groups:
                family = f"{dtype}/{method}:{'+'.join(levels)}"
                front = lagrangian_front(family, _options(sens, method, levels, dtype), fixed,
                                         sens.dtype_loss[dtype])
                for allocation in front:
                    allocation.dtype, allocation.method = dtype, method
                fronts[family] = front
    return fronts


def _options(sens: Sensitivity, method: str, levels: tuple[str, ...], dtype: str
             ) -> dict[str, list[Option]]:
    """Per layer: dense, or each level with its stored bytes and predicted loss."""
    layer_bytes = import_object(search_spaces()[method].layer_bytes)
    return {name: [Option(DENSE, rows * cols * DTYPE_BYTES[dtype], 0.0)]
            + [Option(lv, layer_bytes(lv, rows, cols, dtype), sens.loss(name, (method, lv)))
               for lv in levels]
            for name, (rows, cols) in sens.layers.items()}


def pick(fronts: Fronts, goal: Goal, size_limit: float | None, correction: float = 1.0,
         margins: tuple[float, ...] = MARGINS) -> list[Allocation]:
    """The allocations worth verifying, best first: per family the best predicted one at a
    few safety margins, `correction` rescaling predicted losses (measured / predicted)."""
    picked: list[Allocation] = []
    for margin in margins:
        per_family = []
        for front in fronts.values():
            if goal.minimize == "perplexity":
                choice = best_within(front, (size_limit or math.inf) * (1 - (1 - margin) / 10))
            else:
                budget = math.log(goal.max_perplexity_ratio or math.inf) * margin / correction
                choice = smallest_within(front, budget)
            if choice is not None:
                per_family.append(choice)
        key = (lambda a: (a.loss, a.bytes)) if goal.minimize == "perplexity" else \
            (lambda a: (a.bytes, a.loss))
        picked.extend(sorted(per_family, key=key))
    unique: list[Allocation] = []
    for allocation in picked:
        if not any(_same(allocation, u) for u in unique):
            unique.append(allocation)
    return unique


def _same(a: Allocation, b: Allocation) -> bool:
    return (a.choices, a.dtype, a.method) == (b.choices, b.dtype, b.method)


def uniform_points(fronts: Fronts, size_limit: float | None) -> list[Allocation]:
    """Per family, the allocation that applies its level to every layer (the front's
    fewest-bytes end), where it fits the size budget.

    For the perplexity objective the front's best point keeps the layers predicted most
    sensitive dense; at 8 bits the predicted losses are below what a few calibration
    windows resolve, and measured, quantizing those layers too was no worse (SmolLM2: GPTQ
    int8 on every layer 24.328 against 24.339 with 69 layers kept float32). So the uniform
    recipe of each family is verified beside the predicted ones and measurement decides."""
    limit = size_limit if size_limit is not None else math.inf
    points = [min(front, key=lambda a: (a.bytes, a.loss)) for front in fronts.values() if front]
    return sorted((a for a in points if a.bytes <= limit), key=lambda a: (a.loss, a.bytes))
