"""The front door: CLI listing, encoders, and nothing half-written on failure."""

from __future__ import annotations

import subprocess
import sys

import pytest

import compressors
from compressors.methods import METHODS
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS


def test_cli_methods_lists_every_method_with_ranges():
    result = subprocess.run([sys.executable, "-m", "compressors", "methods"],
                            capture_output=True, text=True, check=True, timeout=120)
    for name in METHODS:
        assert f"{name}:" in result.stdout
    assert "range [0.0, 1.0)" in result.stdout


def test_cli_bad_recipe_exits_2_naming_the_field(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "compressors", "run", "--recipe",
         '{"steps": [{"method": "wanda", "sparsity": 1.5}]}', "--out", str(tmp_path / "x")],
        capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 2
    assert "sparsity" in result.stderr and "less than 1" in result.stderr
    assert not (tmp_path / "x").exists()


def test_encoder_is_pruned_without_perplexity(tmp_path):
    recipe = parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.3}],
                           **SMALL_BUDGETS})
    out = tmp_path / "minilm"
    report = compressors.compress("all-minilm-l6-v2", recipe, out, device="cpu").to_json()
    assert report["metrics"]["after"]["perplexity"] is None
    assert abs(report["sparsity"]["total"] - 0.3) < 1e-3
    model = compressors.load(tmp_path / "minilm")
    assert type(model).__name__ == "BertModel"


def test_existing_output_is_not_clobbered(tmp_path, tiny_llama_folder):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.5}], **SMALL_BUDGETS})
    with pytest.raises(FileExistsError):
        compressors.compress(tiny_llama_folder, recipe, out, device="cpu")
    assert (out / "keep.txt").read_text() == "mine"


def test_failing_step_publishes_nothing(tmp_path, tiny_llama_folder):
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5,
                                      "include": ["^lm_head$"]}], **SMALL_BUDGETS})
    with pytest.raises(ValueError, match="outside the transformer blocks"):
        compressors.compress(tiny_llama_folder, recipe, tmp_path / "out", device="cpu")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_atomically(tmp_path, tiny_llama_folder):
    out = tmp_path / "out"
    recipe = parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.5}], **SMALL_BUDGETS})
    compressors.compress(tiny_llama_folder, recipe, out, device="cpu")
    (out / "stale.txt").write_text("old")
    compressors.compress(tiny_llama_folder, recipe, out, device="cpu", overwrite=True)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_published_configs_never_ask_for_remote_code(tiny_llama_folder, tmp_path):
    """A source config with `auto_map` / `trust_remote_code` (a server model, say) publishes
    a checkpoint whose configs have neither: nothing invites a user to run shipped code."""
    import json
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_llama_folder, source)
    config = json.loads((source / "config.json").read_text())
    config.update(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"},
                  trust_remote_code=True)
    (source / "config.json").write_text(json.dumps(config))
    recipe = parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.5}],
                           "calibration": {"samples": 2, "seqlen": 32},
                           "evaluation": {"windows": 1, "seqlen": 32}})
    compressors.compress(source, recipe, tmp_path / "out", device="cpu")
    published = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in published and "trust_remote_code" not in published
    assert compressors.publish.verify_manifest(tmp_path / "out")
