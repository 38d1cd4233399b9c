"""Per-layer allocation under a budget: a multiple-choice knapsack solved by its Lagrangian.

Pure math, no torch. Each layer has options (level, stored bytes, predicted loss increase);
for a multiplier λ every layer independently takes the option minimising `bytes + λ·loss`.
Sweeping λ over every exchange rate at which some layer changes its mind traces the lower
convex hull of the (bytes, loss) trade-off exactly: the allocations a knapsack solver would
reach at those budgets, without a grid of whole recipes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    level: str
    bytes: float
    loss: float


@dataclass
class Allocation:
    """One point of a family's front: which level each layer takes, and the prediction.

    `dtype` and `method` say which family it is (the search's fronts set them; the math here
    never reads them)."""

    family: str
    choices: dict[str, str]
    bytes: float
    loss: float
    dtype: str = ""
    method: str = ""

    @property
    def predicted_ratio(self) -> float:
        """Predicted perplexity ratio to the dense model: exp(Δ mean NLL)."""
        return math.exp(self.loss)


def _exchange_rates(options: dict[str, list[Option]]) -> list[float]:
    """Every λ at which some layer's best option can change: bytes saved per loss added."""
    rates = {0.0}
    for layer_options in options.values():
        for a in layer_options:
            for b in layer_options:
                if b.loss > a.loss and b.bytes < a.bytes:
                    rates.add((a.bytes - b.bytes) / (b.loss - a.loss))
    return sorted(rates)


def _pick(layer_options: list[Option], lam: float) -> Option:
    return min(layer_options, key=lambda o: (o.bytes + lam * o.loss, o.loss, o.bytes))


def lagrangian_front(
    family: str, options: dict[str, list[Option]], fixed_bytes: float, fixed_loss: float,
) -> list[Allocation]:
    """The family's allocations along the hull, from cheapest in loss to cheapest in bytes.

    λ = 0 minimises bytes alone (ties to lower loss); λ just above the largest rate keeps every
    layer at its lowest-loss option. Each allocation adds `fixed_bytes` (weights no option
    touches: embeddings, norms) and `fixed_loss` (e.g. the dtype's own loss increase).
    """
    rates = _exchange_rates(options)
    lambdas = [rates[-1] * 2 + 1.0] + [r * (1 + 1e-9) for r in reversed(rates)] + [0.0]
    seen: set[tuple[tuple[str, str], ...]] = set()
    front: list[Allocation] = []
    for lam in lambdas:
        chosen = {name: _pick(opts, lam) for name, opts in options.items()}
        key = tuple(sorted((n, o.level) for n, o in chosen.items()))
        if key in seen:
            continue
        seen.add(key)
        front.append(Allocation(
            family=family, choices={n: o.level for n, o in chosen.items()},
            bytes=fixed_bytes + sum(o.bytes for o in chosen.values()),
            loss=fixed_loss + sum(o.loss for o in chosen.values())))
    return front


def pareto(allocations: list[Allocation]) -> list[Allocation]:
    """The allocations no other one beats in both bytes and loss, by increasing bytes."""
    ordered = sorted(allocations, key=lambda a: (a.bytes, a.loss))
    front: list[Allocation] = []
    best_loss = math.inf
    for allocation in ordered:
        if allocation.loss < best_loss:
            front.append(allocation)
            best_loss = allocation.loss
    return front


def smallest_within(front: list[Allocation], max_loss: float) -> Allocation | None:
    """The fewest bytes among those predicted within the loss budget."""
    feasible = [a for a in front if a.loss <= max_loss]
    return min(feasible, key=lambda a: (a.bytes, a.loss)) if feasible else None


def best_within(front: list[Allocation], max_bytes: float) -> Allocation | None:
    """The lowest predicted loss among those within the byte budget."""
    feasible = [a for a in front if a.bytes <= max_bytes]
    return min(feasible, key=lambda a: (a.loss, a.bytes)) if feasible else None
