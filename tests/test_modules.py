"""Generic discovery of blocks and Linear-like layers across architectures."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from compressors.engine.modules import find_blocks, select_layers, weight_matrix
from tests.conftest import tiny_model

EXPECTED_BLOCKS = {"llama": "model.layers", "gpt2": "transformer.h",
                   "opt": "model.decoder.layers", "bert": "encoder.layer"}


@pytest.mark.parametrize("kind", list(EXPECTED_BLOCKS))
def test_find_blocks(kind):
    name, blocks = find_blocks(tiny_model(kind))
    assert name == EXPECTED_BLOCKS[kind]
    assert len(blocks) == 2


@pytest.mark.parametrize("kind", list(EXPECTED_BLOCKS))
def test_default_targets_are_linear_layers_inside_blocks(kind):
    model = tiny_model(kind)
    layers = select_layers(model)
    prefix = EXPECTED_BLOCKS[kind] + "."
    assert layers and all(name.startswith(prefix) for name in layers)
    assert not any("lm_head" in n or "embed" in n for n in layers)


def test_gpt2_conv1d_weight_matrix_is_out_by_in_view():
    model = tiny_model("gpt2")
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, Conv1D)
    view = weight_matrix(layer)
    assert view.shape == (layer.nf, layer.weight.shape[0])
    view[3, 5] = 0.0
    assert layer.weight[5, 3] == 0.0
    x = torch.randn(2, layer.weight.shape[0])
    assert torch.allclose(layer(x), x @ view.t() + layer.bias, atol=1e-5)


def test_include_and_exclude_regexes():
    model = tiny_model("llama")
    only_mlp = select_layers(model, include=[r"mlp\."])
    assert only_mlp and all(".mlp." in n for n in only_mlp)
    no_down = select_layers(model, exclude=["down_proj"])
    assert not any("down_proj" in n for n in no_down)
    head = select_layers(model, include=["^lm_head$"])
    assert list(head) == ["lm_head"]
