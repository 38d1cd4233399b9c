"""Find transformer blocks and Linear-like layers in any architecture, without per-model code.

A *block* is an entry of the model's largest `nn.ModuleList` whose entries all share one class
(Llama's `model.layers`, GPT-2's `transformer.h`, BERT's `encoder.layer`, ...). A *Linear-like*
layer is a dense `nn.Linear`, GPT-2's `Conv1D` (which stores its weight transposed), or one
expert's matrix of a mixture-of-experts block (`engine.experts`: a view into a fused 3-D
parameter); `weight_matrix` hides those differences by always returning an
`[out_features, in_features]` view. Other layer kinds (quantized, factorized) are read through
`engine.layers`. Routers are Linear-like too, but never in a default selection.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from compressors.engine.experts import expert_layers, router_names
from compressors.engine.layers import EDITABLE, ExpertLayer, kind_of
from compressors.recipe import patterns


def is_linear_like(module: nn.Module) -> bool:
    """A dense Linear-like layer or an expert matrix: what pruning, quantizing, retraining
    and factorizing work on."""
    return kind_of(module) in EDITABLE


def is_expert(layer: nn.Module) -> bool:
    return isinstance(layer, ExpertLayer)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as `[out, in]`; a view, so in-place edits reach the layer."""
    kind = kind_of(layer)
    if kind not in EDITABLE:
        raise TypeError(f"{type(layer).__name__} is not a dense layer whose weights can be "
                        "edited in place; read it with engine.layers.dense_weight")
    return kind.dense_weight(layer)


def in_features(layer: nn.Module) -> int:
    return weight_matrix(layer).shape[1]


def is_causal_lm(model: nn.Module) -> bool:
    """A model with an output embedding (an LM head): perplexity and the LM loss apply."""
    getter = getattr(model, "get_output_embeddings", None)
    return getter is not None and getter() is not None


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The repeated transformer blocks: the biggest homogeneous ModuleList by parameter count."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise ValueError(f"no transformer blocks found in {type(model).__name__}")
    return best[1], best[2]


def block_names(model: nn.Module) -> list[str]:
    prefix, blocks = find_blocks(model)
    return [f"{prefix}.{i}" for i in range(len(blocks))]


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Linear-like layer by name, expert matrices included."""
    found = {name: m for name, m in model.named_modules() if is_linear_like(m)}
    return {**found, **expert_layers(model)}


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every weight-holding layer of any kind (dense, quantized, factorized, expert matrices)
    by name: what the report counts."""
    found = {name: m for name, m in model.named_modules() if kind_of(m) is not None}
    return {**found, **expert_layers(model)}


def select_layers(
    model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] | None = None
) -> dict[str, nn.Module]:
    """Linear-like layers chosen by regex (RE2, searched anywhere in the full name: the
    engine the recipe was validated with, see `recipe.patterns`).

    Without `include`, the default is every Linear-like layer inside the transformer blocks,
    expert matrices included, which never includes embeddings, the LM head or the routers of
    MoE blocks; with it, any Linear-like layer may match, routers too. An empty selection is
    an error: a step that changes nothing must not succeed.
    """
    layers = linear_layers(model)
    include, exclude = list(include or []), list(exclude or [])
    for pattern in include + exclude:
        patterns.compile_pattern(pattern)  # a refused pattern fails before anything is chosen
    if include:
        chosen = {n: m for n, m in layers.items() if patterns.search_any(include, n)}
    else:
        prefix, _ = find_blocks(model)
        routers = router_names(model)
        chosen = {n: m for n, m in layers.items() if n.startswith(prefix + ".")
                  and not any(n == r or n.startswith(r + ".") for r in routers)}
    chosen = {n: m for n, m in chosen.items() if not patterns.search_any(exclude, n)}
    if not chosen:
        raise ValueError(
            "include/exclude: no Linear-like layer matches, so the step would change nothing"
            + (f" (the model has {len(layers)} Linear-like layers, e.g. {next(iter(layers))})"
               if layers else " (the model has no Linear-like layers)"))
    return chosen


def layers_in_block(layers: dict[str, nn.Module], block_name: str) -> dict[str, nn.Module]:
    return {n: m for n, m in layers.items() if n.startswith(block_name + ".")}


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` in place of the submodule called `name` (for swapping layer kinds)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
