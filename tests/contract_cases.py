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

from compressors.modules import dense_weight, is_quantized, select_layers, weight_matrix
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


def quantized(layer_type: str, lorc_rank: int = 0, row_sparsity: float = 0.0) -> Check:
    """Block layers reload as `layer_type`; LoRC factors of `lorc_rank` where asked; pruned
    rows keep their exact zeros through quantization."""

    def check(model: nn.Module, _report: dict[str, Any]) -> None:
        for name, layer in select_layers(model).items():
            assert type(layer).__name__ == layer_type, name
            lorc = getattr(layer, "lorc", None)
            assert (lorc.rank if lorc is not None else 0) == lorc_rank, name
            zeros = (dense_weight(layer) == 0).sum(dim=1)
            assert bool((zeros >= int(layer.in_features * row_sparsity)).all()), name
        head = model.get_output_embeddings()
        assert head is None or not is_quantized(head)

    return check


def factorized(max_kept: float | None) -> Check:
    """lowrank: block layers reload as LowRankLinear at the reported ranks, keeping at most
    `max_kept` of the targeted parameters; None = exported dense (standard layers only)."""

    def check(model: nn.Module, report: dict[str, Any]) -> None:
        from compressors.lowrank.layers import lowrank_layers

        found = lowrank_layers(model)
        section = report["lowrank"]
        if max_kept is None:
            assert not found and select_layers(model)
            return
        assert {n: m.rank for n, m in found.items()} == section["ranks"]
        assert not select_layers(model), "a targeted layer stayed dense"
        assert section["kept_fraction_targeted"] <= max_kept
        assert report["metrics"]["after"]["size_bytes"] < report["metrics"]["before"]["size_bytes"]

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
    "sparsegpt": [
        ContractCase("sparsegpt-50", [{"method": "sparsegpt", "sparsity": 0.5}],
                     {"method": "sparsegpt", "sparsity": 0.5, "dampening": -0.1}, "dampening",
                     matrix_exactly_sparse(0.5)),
        ContractCase("sparsegpt-2:4", [{"method": "sparsegpt", "pattern": "2:4"}],
                     {"method": "sparsegpt", "pattern": "2:4", "blocksize": 6}, "blocksize",
                     nm_valid(2, 4)),
        ContractCase("sparsegpt-2:4-then-nf4",
                     [{"method": "sparsegpt", "pattern": "2:4", "blocksize": 32},
                      {"method": "quantize"}],
                     {"method": "sparsegpt", "sparsity": 0.5, "scope": "column"}, "scope",
                     quantized("Linear4bit", row_sparsity=0.5), architectures=("llama",)),
    ],
    "quantize": [
        ContractCase("quantize-nf4", [{"method": "quantize"}],
                     {"method": "quantize", "bits": 3}, "bits", quantized("Linear4bit")),
        ContractCase("quantize-int8-lorc", [{"method": "quantize", "bits": 8, "lorc_rank": 4}],
                     {"method": "quantize", "lorc_rank": -1}, "lorc_rank",
                     quantized("Linear8bitLt", lorc_rank=4)),
        ContractCase("wanda-then-fp4-double-quant",
                     [{"method": "wanda", "sparsity": 0.5},
                      {"method": "quantize", "quant_type": "fp4", "double_quant": True}],
                     {"method": "quantize", "bits": 8, "double_quant": True}, "double_quant",
                     quantized("Linear4bit", row_sparsity=0.5)),
    ],
    "perp": [
        ContractCase("magnitude-50-perp-masklora",
                     [{"method": "magnitude", "sparsity": 0.5},
                      {"method": "perp", "mode": "masklora", "steps": 2, "seqlen": 32, "rank": 2}],
                     {"method": "perp", "mode": "masklora", "rank": 0}, "rank",
                     matrix_exactly_sparse(0.5)),
        ContractCase("wanda-2:4-perp-scalelora",
                     [{"method": "wanda", "pattern": "2:4"},
                      {"method": "perp", "mode": "scalelora", "steps": 2, "seqlen": 32,
                       "rank": 2}],
                     {"method": "perp", "mode": "sparse"}, "mode", nm_valid(2, 4)),
    ],
    "lowrank": [
        ContractCase("lowrank-pela",
                     [{"method": "lowrank", "target_params": 0.6, "steps": 2, "seqlen": 32}],
                     {"method": "lowrank", "ratio": 0.5}, "ratio", factorized(0.6)),
        ContractCase("lowrank-svd-export-dense",
                     [{"method": "lowrank", "rank": 8, "steps": 0, "export_dense": True}],
                     {"method": "lowrank", "rank": 8, "energy": 0.9}, "energy",
                     factorized(None)),
    ],
}
