"""Mixture-of-experts expert matrices as layers (issue 28): discovery, names, inputs.

Tiny random models of transformers 5's MoE families: the fused 3-D experts parameters are
found by their router, each expert's matrix is a view named as transformers saves it, routers
are never a default target, an expert layer sees exactly the tokens its router sends it (or,
for statistics, every token, with the block's output unchanged), and what a step writes lands
in the fused parameter. The whole pipeline on every family is tests/test_architectures.py.
"""

from __future__ import annotations

import pytest
import torch

from compressors.engine.experts import (
    ExpertInputs,
    eager_experts,
    expert_layers,
    kind_of_layer,
    moe_blocks,
    router_names,
    starved,
)
from compressors.engine.modules import select_layers, weight_matrix

FAMILIES = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                      shared_expert_intermediate_size=32),
}


def tiny_moe(family: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=128, hidden_size=32, intermediate_size=48,
                                  num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, **FAMILIES[family])
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_expert_matrix_is_a_view_into_its_fused_parameter(family: str) -> None:
    model = tiny_moe(family)
    blocks = moe_blocks(model)
    assert len(blocks) == 2 and all(b.num_experts == 4 for b in blocks)
    layers = expert_layers(model)
    fused = {n: p for n, p in model.named_parameters() if p.ndim == 3
             and not n.endswith("_bias")}
    # every element of every fused parameter belongs to exactly one expert layer
    covered = {name: torch.zeros_like(p, dtype=torch.int) for name, p in fused.items()}
    for layer in layers.values():
        view = weight_matrix(layer)
        owner = covered[layer.fused][layer.expert]
        owner = owner.t() if layer.transposed else owner
        owner[layer.rows or slice(None)] += 1
        assert view.data_ptr() >= fused[layer.fused].data_ptr()  # a view, not a copy
    assert all(bool((c == 1).all()) for c in covered.values())
    # an in-place edit through the view lands in the model
    layer = next(iter(layers.values()))
    weight_matrix(layer).zero_()
    assert float(getattr(layer.owner, layer.param)[layer.expert].abs().sum()) < float(
        getattr(layer.owner, layer.param).abs().sum())


def test_names_follow_what_transformers_saves() -> None:
    """Per-expert names where transformers saves experts one by one (Qwen3-MoE: gate and up
    split out of gate_up_proj; Mixtral: w1/w3/w2 under block_sparse_moe), the fused tensor's
    name and the expert index where it saves them whole (GPT-OSS)."""
    qwen = expert_layers(tiny_moe("qwen3_moe"))
    assert {"model.layers.1.mlp.experts.3.gate_proj", "model.layers.1.mlp.experts.3.up_proj",
            "model.layers.1.mlp.experts.3.down_proj"} <= set(qwen)
    assert qwen["model.layers.1.mlp.experts.3.up_proj"].rows == slice(16, 32)
    mixtral = expert_layers(tiny_moe("mixtral"))
    assert "model.layers.0.block_sparse_moe.experts.2.w3" in mixtral
    model = tiny_moe("gpt_oss")  # held: an expert layer does not keep its model alive
    layer = expert_layers(model)["model.layers.0.mlp.experts.gate_up_proj.1"]
    assert layer.transposed and not layer.per_expert_checkpoint
    assert weight_matrix(layer).shape == (96, 32)  # [out, in] whatever the storage


def test_routers_are_never_a_default_target_and_kinds_are_told_apart() -> None:
    model = tiny_moe("qwen2_moe")
    routers = router_names(model)
    assert routers == {"model.layers.0.mlp.gate", "model.layers.0.mlp.shared_expert_gate",
                       "model.layers.1.mlp.gate", "model.layers.1.mlp.shared_expert_gate"}
    chosen = select_layers(model)
    assert not routers & set(chosen)
    kinds = {kind_of_layer(model, name) for name in chosen}
    assert kinds == {"attention", "experts", "shared_experts"}
    assert kind_of_layer(model, "model.layers.0.mlp.shared_expert_gate") == "routers"
    named = select_layers(model, include=[r"shared_expert_gate"])  # a recipe may name them
    assert set(named) == {"model.layers.0.mlp.shared_expert_gate",
                          "model.layers.1.mlp.shared_expert_gate"}


def _routed_counts(model: torch.nn.Module, hidden: torch.Tensor) -> dict[int, int]:
    """How many tokens the first MoE block's router sends to each expert (top-k)."""
    block = moe_blocks(model)[0]
    router = model.get_submodule(block.routers[0])
    logits = torch.nn.functional.linear(hidden.reshape(-1, hidden.shape[-1]), router.weight,
                                        getattr(router, "bias", None))
    chosen = logits.topk(2, dim=-1).indices.flatten()
    return {e: int((chosen == e).sum()) for e in range(block.num_experts)}


@pytest.mark.parametrize("family", ["qwen3_moe", "gpt_oss"])
def test_an_expert_sees_the_tokens_routed_to_it_or_all_of_them(family: str) -> None:
    model = tiny_moe(family)
    block = moe_blocks(model)[0]
    moe = model.get_submodule(block.name)
    layers = {n: layer for n, layer in expert_layers(model).items()
              if n.startswith(block.name.rsplit(".", 1)[0] + ".")}
    hidden = torch.randn(1, 24, 32)
    expected = moe(hidden)
    expected = expected[0] if isinstance(expected, tuple) else expected
    for all_experts in (False, True):
        seen: dict[str, int] = {}
        watch = ExpertInputs(layers, lambda layer, x, seen=seen: seen.__setitem__(
            layer.name, seen.get(layer.name, 0) + x.shape[0]), all_experts)
        with eager_experts(layers.values()), watch.watching(), torch.no_grad():
            out = moe(hidden)
        out = out[0] if isinstance(out, tuple) else out
        assert torch.allclose(out, expected, atol=1e-5)  # the block's output is the routed one
        routed = _routed_counts(model, hidden)
        for name, layer in layers.items():
            wanted = 24 if all_experts else routed[layer.expert]
            assert seen.get(name, 0) == wanted == watch.tokens[name], (name, all_experts)


def test_experts_routed_too_few_tokens_are_named() -> None:
    layers = expert_layers(tiny_moe("qwen3_moe"))
    names = list(layers)
    tokens = {names[0]: 3, names[1]: 500}
    thin = starved({n: layers[n] for n in names[:3]}, tokens)
    assert thin == {names[0]: 3, names[2]: 0}
