"""The contract table: one entry per registered method, run through the same checks.

Every method in `compressors.registry.METHODS` must appear here (a test enforces it). A case
gives a recipe that exercises the method on tiny models, an invalid step with the field its
error must name, and an optional method-specific check of the reloaded checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from compressors.modules import select_layers, weight_matrix
from compressors.pruning.masks import nm_groups_valid

Check = Callable[[nn.Module, dict[str, Any]], None]


@dataclass(frozen=True)
class ContractCase:
    id: str
    steps: list[dict[str, Any]]
    invalid_step: dict[str, Any]
    invalid_field: str
    check: Check | None = None
    architectures: tuple[str, ...] = ("llama", "gpt2")
    extra: dict[str, Any] = field(default_factory=dict)


def rows_exactly_sparse(sparsity: float) -> Check:
    def check(model: nn.Module, _report: dict[str, Any]) -> None:
        for name, layer in select_layers(model).items():
            weight = weight_matrix(layer)
            zeros = (weight == 0).sum(dim=1)
            expected = int(weight.shape[1] * sparsity)
            assert bool((zeros >= expected).all()), f"{name}: a row has too few zeros"

    return check


def matrix_exactly_sparse(sparsity: float) -> Check:
    def check(model: nn.Module, _report: dict[str, Any]) -> None:
        for name, layer in select_layers(model).items():
            weight = weight_matrix(layer)
            assert int((weight == 0).sum()) >= int(weight.numel() * sparsity), name

    return check


def nm_valid(n: int, m: int) -> Check:
    def check(model: nn.Module, _report: dict[str, Any]) -> None:
        for name, layer in select_layers(model).items():
            assert nm_groups_valid(weight_matrix(layer), n, m), f"{name} breaks {n}:{m}"

    return check


CASES: dict[str, list[ContractCase]] = {
    "magnitude": [
        ContractCase("magnitude-50", [{"method": "magnitude", "sparsity": 0.5}],
                     {"method": "magnitude", "sparsity": 1.5}, "sparsity",
                     matrix_exactly_sparse(0.5)),
        ContractCase("magnitude-row-2:4",
                     [{"method": "magnitude", "pattern": "2:4", "scope": "row"}],
                     {"method": "magnitude", "pattern": "4:2"}, "pattern", nm_valid(2, 4)),
    ],
    "wanda": [
        ContractCase("wanda-50", [{"method": "wanda", "sparsity": 0.5}],
                     {"method": "wanda", "sparsity": 0.5, "bogus": 1}, "bogus",
                     rows_exactly_sparse(0.5)),
        ContractCase("wanda-4:8", [{"method": "wanda", "pattern": "4:8"}],
                     {"method": "wanda", "pattern": "2:4", "sparsity": 0.3}, "sparsity",
                     nm_valid(4, 8)),
    ],
}
