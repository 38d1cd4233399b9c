"""Magnitude and Wanda on the real SmolLM2-135M with real SOTU text (small budgets)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import compressors
from compressors.engine.modules import select_layers, weight_matrix
from compressors.ops.masks import nm_groups_valid
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS

pytestmark = pytest.mark.real_model


def test_cli_wanda_on_smollm2(tmp_path, smollm2_path):
    recipe = json.dumps({"steps": [{"method": "wanda", "sparsity": 0.5}], **SMALL_BUDGETS})
    out = tmp_path / "wanda"
    result = subprocess.run(
        [sys.executable, "-m", "compressors", "run", "--model", "smollm2-135m",
         "--recipe", recipe, "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Perplexity" in result.stdout and "Nonzero parameters" in result.stdout

    report = json.loads((out / "compression_report.json").read_text())
    before, after = report["metrics"]["before"], report["metrics"]["after"]
    assert after["perplexity"] > before["perplexity"] > 1.0  # pruning costs something
    assert after["nonzero_parameters"] < before["nonzero_parameters"]
    assert len(report["sparsity"]["per_layer"]) == 30 * 7
    assert abs(report["sparsity"]["total"] - 0.5) < 1e-3

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    for name, layer in select_layers(model).items():
        weight = weight_matrix(layer)
        zeros = (weight == 0).sum(dim=1)
        assert torch.all(zeros >= weight.shape[1] // 2), name
    dense = AutoModelForCausalLM.from_pretrained(smollm2_path, local_files_only=True)
    assert torch.equal(dense.lm_head.weight, model.lm_head.weight)  # LM head untouched


def test_magnitude_2_4_on_smollm2(tmp_path):
    recipe = parse_recipe({"steps": [{"method": "magnitude", "pattern": "2:4"}],
                           **SMALL_BUDGETS})
    report = compressors.compress("smollm2-135m", recipe, tmp_path / "m24", device="cpu").to_json()
    model = compressors.load(tmp_path / "m24")
    for name, layer in select_layers(model).items():
        assert nm_groups_valid(weight_matrix(layer), 2, 4), name
    assert report["metrics"]["after"]["perplexity"] > report["metrics"]["before"]["perplexity"]
    card = (tmp_path / "m24" / "README.md").read_text()
    assert "base_model: smollm2-135m" in card and "| Perplexity |" in card
