"""Scales folded into the op before a layer (`engine.folding`, `ops.smoothing`): which op it is,
found by measurement on Llama (GQA and MHA), OPT and a mixture-of-experts block; folding keeps
the model's function; SmoothQuant's statistics and AWQ's scale family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from compressors.engine.folding import (
    EXPERT_REASON,
    NO_FOLD_REASON,
    FoldFinder,
    apply_fold,
    submodule,
    unscaled_layers,
)
from compressors.engine.modules import select_layers
from compressors.engine.sequential import BlockContext, run_sequential
from compressors.ops.smoothing import (
    awq_scales,
    column_absmax,
    normalised_column_means,
    search_points,
    smoothquant_scales,
)
from tests.conftest import tiny_model


def _mha_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    return AutoModelForCausalLM.from_config(config).eval()


def _windows(count: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(0, 256, (count, length), generator=torch.Generator().manual_seed(1))


def _folds(model) -> dict[int, list]:
    finder, found = FoldFinder(), {}

    def visit(block: BlockContext) -> None:
        found[block.index] = (finder.folds(block), unscaled_layers(block.layers, finder.folds(
            block)))

    run_sequential(model, _windows(), select_layers(model), visit)
    return found


def _named(folds, prefix: str) -> dict[str, tuple[str, ...]]:
    """{predecessor: consumers}, names relative to the block `prefix`."""
    return {f.predecessor.removeprefix(prefix): tuple(c.removeprefix(prefix)
                                                      for c in f.consumers) for f in folds}


@pytest.mark.parametrize(("kind", "expected"), [
    ("llama", {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
               "mlp.up_proj": ("mlp.down_proj",)}),
    ("mha-llama", {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj",
                                       "self_attn.v_proj"),
                   "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj"),
                   "self_attn.v_proj": ("self_attn.o_proj",),
                   "mlp.up_proj": ("mlp.down_proj",)}),
    ("qwen3_moe", {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj",
                                       "self_attn.v_proj")}),
])
def test_the_op_before_each_layer_is_measured_not_looked_up(kind, expected):
    """GQA's v_proj has fewer channels than o_proj reads: no fold; with one value head per
    query head (MHA) v_proj -> o_proj is found. A MoE block's post-attention norm also feeds
    the router and the experts (no module hook sees them): the validation refuses it."""
    model = _mha_llama() if kind == "mha-llama" else tiny_model(kind)
    folds, unscaled = _folds(model)[1]
    prefix = "model.layers.1."
    assert _named(folds, prefix) == expected
    parents = {f.predecessor.removeprefix(prefix): f.parent.removeprefix(prefix) for f in folds}
    assert parents["input_layernorm"] == "self_attn"
    if "mlp.up_proj" in parents:
        assert parents["post_attention_layernorm"] == "mlp"
        assert parents["mlp.up_proj"] == "mlp.down_proj"
    if kind == "llama":
        assert unscaled == {"model.layers.1.self_attn.o_proj": NO_FOLD_REASON}
    if kind == "qwen3_moe":
        assert set(unscaled.values()) == {EXPERT_REASON, NO_FOLD_REASON}
        assert sum(r == EXPERT_REASON for r in unscaled.values()) == 8 * 3


def test_opt_folds_into_layer_norms_and_through_relu():
    """OPT: LayerNorm weight *and bias*; fc1 -> fc2 through ReLU (positively homogeneous);
    MHA v_proj -> out_proj."""
    folds, unscaled = _folds(tiny_model("opt"))[0]
    found = {k: set(v) for k, v in _named(folds, "model.decoder.layers.0.").items()}
    assert found == {"self_attn_layer_norm": {"self_attn.q_proj", "self_attn.k_proj",
                                              "self_attn.v_proj"},
                     "final_layer_norm": {"fc1"}, "self_attn.v_proj": {"self_attn.out_proj"},
                     "fc1": {"fc2"}}
    assert not unscaled


@pytest.mark.parametrize("kind", ["llama", "mha-llama", "opt", "qwen3_moe"])
def test_folding_any_positive_scales_keeps_the_function(kind):
    model = _mha_llama() if kind == "mha-llama" else tiny_model(kind)
    ids = _windows(2, 24)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    finder = FoldFinder()
    gen = torch.Generator().manual_seed(5)

    def fold_all(block: BlockContext) -> None:
        for fold in finder.folds(block):
            width = submodule(block, fold.consumers[0]).in_features
            apply_fold(block, fold, torch.exp(torch.randn(width, generator=gen)))

    run_sequential(model, _windows(), select_layers(model), fold_all)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4), (after - before).abs().max()


def test_smoothquant_scales_split_the_range_and_flatten_the_inputs():
    absmax = torch.tensor([10.0, 1.0, 0.1, 0.0])
    weights = [torch.tensor([[0.5, 1.0, 2.0, 1.0], [-0.25, 0.5, -1.0, 3.0]])]
    wmax = column_absmax(weights)
    assert torch.equal(wmax, torch.tensor([0.5, 1.0, 2.0, 3.0]))
    scales = smoothquant_scales(absmax, wmax, 0.5)
    assert torch.allclose(scales[:3], (absmax[:3] / wmax[:3]).sqrt())
    assert scales[3] == 1.0  # no token reached it: left alone
    # alpha 1/2: after folding, inputs and weight columns have the same range per channel
    assert torch.allclose(absmax[:3] / scales[:3], wmax[:3] * scales[:3])
    heavy = smoothquant_scales(absmax, wmax, 0.8)
    assert float((absmax[:3] / heavy[:3]).max()) < float((absmax[:3] / scales[:3]).max())


def test_awq_scale_family_and_grid():
    means = torch.tensor([4.0, 1.0, 0.25])
    assert torch.equal(awq_scales(means, None, 0.0), torch.ones(3))
    scales = awq_scales(means, None, 1.0)
    assert torch.allclose(scales.max() * scales.min(), torch.tensor(1.0))
    assert torch.allclose(scales, torch.tensor([4.0, 1.0, 0.25]) / 1.0)
    weights = [torch.tensor([[1.0, 2.0, 4.0, 8.0]])]
    assert torch.allclose(normalised_column_means(weights, 2),
                          torch.tensor([0.5, 1.0, 0.5, 1.0]), atol=1e-5)
    points = search_points(20, "both")
    assert points[0] == (0.0, False) and len(points) == 20
    assert {duo for _, duo in points} == {False, True}
    assert search_points(20, "duo")[0] == (0.0, False)
    assert all(not duo for _, duo in search_points(5, "activations"))
