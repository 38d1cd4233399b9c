"""The contract table: one entry per registered method, run through the same checks.

Every method in `compressors.methods.METHODS` must appear here (a test enforces it). A case
gives a recipe that exercises the method on tiny models, an invalid step with the field its
error must name, and an optional method-specific check of the reloaded checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressors.engine.layers import dense_weight, is_packed
from compressors.engine.modules import find_blocks, select_layers, weight_layers, weight_matrix
from compressors.ops.masks import nm_groups_valid

Check = Callable[[nn.Module, dict[str, Any]], None]


def block_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight layer (of any kind: dense, quantized, factorized) inside the blocks."""
    prefix, _ = find_blocks(model)
    return {n: m for n, m in weight_layers(model).items() if n.startswith(prefix + ".")}


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
        for name, layer in block_layers(model).items():
            assert type(layer).__name__ == layer_type, name
            lorc = getattr(layer, "lorc", None)
            assert (lorc.rank if lorc is not None else 0) == lorc_rank, name
            zeros = (dense_weight(layer) == 0).sum(dim=1)
            assert bool((zeros >= int(layer.in_features * row_sparsity)).all()), name
        head = model.get_output_embeddings()
        assert head is None or not is_packed(head)

    return check


def factorized(max_kept: float | None) -> Check:
    """lowrank: block layers reload as LowRankLinear at the reported ranks, keeping at most
    `max_kept` of the targeted parameters; None = exported dense (standard layers only)."""

    def check(model: nn.Module, report: dict[str, Any]) -> None:
        from compressors.methods.lowrank.layers import lowrank_layers

        found = lowrank_layers(model)
        section = report["lowrank"]
        dense = {n for n, m in block_layers(model).items() if n not in found}
        if max_kept is None:
            assert not found and dense
            return
        assert {n: m.rank for n, m in found.items()} == section["ranks"]
        assert dense == set(section["layers_skipped"]), "a layer stayed dense unreported"
        assert len(found) > len(dense)
        assert section["kept_fraction_targeted"] <= max_kept
        assert report["metrics"]["after"]["size_bytes"] < report["metrics"]["before"]["size_bytes"]

    return check


def int_weights(bits: int, nm: tuple[int, int] | None = None) -> Check:
    """gptq / rtn: block layers reload as plain Linear layers whose every (row, group) holds
    at most 2^bits values, as the report's grid says; the LM head is untouched; N:M zeros of
    an earlier pruning step are still there."""

    def check(model: nn.Module, report: dict[str, Any]) -> None:
        from compressors.ops.int_grid import resolve_group_size

        section = report["quantization"]
        requested = None if section["group_size"] == "auto" else section["group_size"]
        assert section["bits"] == bits and report["checkpoint"]["how_to_serve"]
        for name, layer in select_layers(model).items():
            weight = weight_matrix(layer)
            size = resolve_group_size(weight.shape[1], requested)
            width = weight.shape[1] if size == -1 else size
            groups = weight.reshape(weight.shape[0], -1, width)
            distinct = max(len(set(g.tolist())) for row in groups for g in row)
            assert distinct <= 2**bits, name
            if nm is not None:
                assert nm_groups_valid(weight, *nm), f"{name} breaks {nm}"
        quantized = set(section["relative_error"]["per_layer"])
        assert quantized == set(select_layers(model))  # the block Linears, not the LM head

    return check


def float_weights(scheme: str, nm: tuple[int, int] | None = None) -> Check:
    """fp8 / nvfp4: block layers reload as plain Linear layers holding values of the scheme's
    grid (fp8: every row is its FP8 codes times one scale; nvfp4: at most 15 magnitudes in each
    group of 16), the section states each tensor's precision at inference, the model card's
    serving text names the GPU; N:M zeros of an earlier pruning step are still there."""

    def check(model: nn.Module, report: dict[str, Any]) -> None:
        from compressors.ops.float_quant import fp8_codes, fp8_dequantize, fp8_weight_scale

        section = report["quantization"]
        assert set(section["precision"]) == {"weights", "input_activations", "kv_cache", "gpu"}
        assert "vllm serve" in report["checkpoint"]["how_to_serve"]
        assert ("Hopper" if scheme == "fp8" else "Blackwell") in report["checkpoint"][
            "how_to_serve"]
        for name, layer in select_layers(model).items():
            weight = weight_matrix(layer).float()
            if scheme == "fp8":
                scale = fp8_weight_scale(weight, "channel")
                again = fp8_dequantize(fp8_codes(weight, scale, "channel"), scale, "channel")
                assert torch.equal(again, weight), name
            else:
                groups = weight.abs().reshape(-1, 16)
                assert max(len(set(g.tolist())) for g in groups) <= 8, name
            if nm is not None:
                assert nm_groups_valid(weight, *nm), f"{name} breaks {nm}"
        assert set(section["relative_error"]["per_layer"]) == set(select_layers(model))

    return check


def scaled_int_weights(bits: int, gpu: str, nm: tuple[int, int] | None = None) -> Check:
    """w8a8 / awq: the integer-grid checks, plus scales folded somewhere, each tensor's
    precision at inference in the section and the GPU generation in the serving text."""
    grid = int_weights(bits, nm)

    def check(model: nn.Module, report: dict[str, Any]) -> None:
        grid(model, report)
        section = report["quantization"]
        assert set(section["precision"]) == {"weights", "input_activations", "kv_cache", "gpu"}
        assert section["smoothing" if "smoothing" in section else "folds"]
        assert gpu in report["checkpoint"]["how_to_serve"]

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
                      {"method": "perp", "mode": "masklora", "train_steps": 2, "seqlen": 32,
                       "rank": 2}],
                     {"method": "perp", "mode": "masklora", "rank": 0}, "rank",
                     matrix_exactly_sparse(0.5)),
        ContractCase("wanda-2:4-perp-scalelora",
                     [{"method": "wanda", "pattern": "2:4"},
                      {"method": "perp", "mode": "scalelora", "train_steps": 2, "seqlen": 32,
                       "rank": 2}],
                     {"method": "perp", "mode": "sparse"}, "mode", nm_valid(2, 4)),
    ],
    "gptq": [
        ContractCase("gptq-w4-g32", [{"method": "gptq", "group_size": 32}],
                     {"method": "gptq", "group_size": 48}, "group_size", int_weights(4),
                     architectures=("llama",)),
        ContractCase("sparsegpt-2:4-then-gptq-w4",
                     [{"method": "sparsegpt", "pattern": "2:4", "blocksize": 32},
                      {"method": "gptq"}],
                     {"method": "gptq", "bits": 3}, "bits", int_weights(4, (2, 4)),
                     architectures=("llama",)),
    ],
    "rtn": [
        ContractCase("rtn-w8-per-channel", [{"method": "rtn", "bits": 8, "group_size": -1}],
                     {"method": "rtn", "scale_dtype": "float8"}, "scale_dtype", int_weights(8),
                     architectures=("llama",)),
    ],
    "w8a8": [
        ContractCase("w8a8-smoothquant-gptq", [{"method": "w8a8"}],
                     {"method": "w8a8", "alpha": 1.5}, "alpha",
                     scaled_int_weights(8, "Turing"), architectures=("llama",)),
        ContractCase("wanda-2:4-then-w8a8-rtn",
                     [{"method": "wanda", "pattern": "2:4"},
                      {"method": "w8a8", "quantizer": "rtn"}],
                     {"method": "w8a8", "quantizer": "awq"}, "quantizer",
                     scaled_int_weights(8, "Turing", (2, 4)), architectures=("llama",)),
    ],
    "awq": [
        ContractCase("awq-w4-g32-rtn", [{"method": "awq", "group_size": 32, "grid": 4}],
                     {"method": "awq", "grid": 1}, "grid",
                     scaled_int_weights(4, "Ampere"), architectures=("llama",)),
        ContractCase("sparsegpt-2:4-then-awq-gptq",
                     [{"method": "sparsegpt", "pattern": "2:4", "blocksize": 32},
                      {"method": "awq", "group_size": 32, "quantizer": "gptq", "grid": 4}],
                     {"method": "awq", "scales": "weights"}, "scales",
                     scaled_int_weights(4, "Ampere", (2, 4)), architectures=("llama",)),
    ],
    "fp8": [
        ContractCase("fp8-dynamic", [{"method": "fp8"}],
                     {"method": "fp8", "weights": "block", "activations": "static"},
                     "activations", float_weights("fp8"), architectures=("llama",)),
        ContractCase("wanda-2:4-then-fp8-static",
                     [{"method": "wanda", "pattern": "2:4"},
                      {"method": "fp8", "activations": "static"}],
                     {"method": "fp8", "weights": "tensor"}, "weights",
                     float_weights("fp8", (2, 4)), architectures=("llama",)),
    ],
    "nvfp4": [
        ContractCase("nvfp4-a16", [{"method": "nvfp4"}],
                     {"method": "nvfp4", "activations": "fp8"}, "activations",
                     float_weights("nvfp4"), architectures=("llama",)),
        ContractCase("sparsegpt-2:4-then-nvfp4-a4",
                     [{"method": "sparsegpt", "pattern": "2:4", "blocksize": 32},
                      {"method": "nvfp4", "activations": "fp4"}],
                     {"method": "nvfp4", "group_size": 32}, "group_size",
                     float_weights("nvfp4", (2, 4)), architectures=("llama",)),
    ],
    "lowrank": [
        ContractCase("lowrank-pela",
                     [{"method": "lowrank", "target_params": 0.6, "train_steps": 2, "seqlen": 32}],
                     {"method": "lowrank", "ratio": 0.5}, "ratio", factorized(0.6)),
        ContractCase("lowrank-svd-export-dense",
                     [{"method": "lowrank", "rank": 8, "init": "svd", "train_steps": 0,
                       "export_dense": True}],
                     {"method": "lowrank", "rank": 8, "energy": 0.9}, "energy",
                     factorized(None)),
        ContractCase("lowrank-whitened-uniform-refit",
                     [{"method": "lowrank", "target_params": 0.5, "allocation": "uniform",
                       "train_steps": 0}],
                     {"method": "lowrank", "target_params": 0.5, "init": "asvd"}, "init",
                     factorized(0.5), architectures=("llama",)),
        ContractCase("lowrank-export-dense-then-nf4",
                     [{"method": "lowrank", "target_params": 0.6, "train_steps": 0,
                       "export_dense": True}, {"method": "quantize"}],
                     {"method": "lowrank", "target_params": 0.6, "max_layer_keep": 0},
                     "max_layer_keep", quantized("Linear4bit"), architectures=("llama",)),
    ],
}
