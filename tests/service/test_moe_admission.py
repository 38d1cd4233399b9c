"""Issue 28: a selection that holds expert matrices a method does not compress is refused at
submission, naming the method and the layer kind; what a method handles passes.

Read from the headers alone, in the API process (no torch): a checkpoint that saves experts
one by one (Qwen3-MoE) and one that saves them fused in 3-D tensors (GPT-OSS).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from service_helpers import auth

from compressors.memory import Limits
from compressors.recipe import Recipe
from jobs.admission import admission_errors

FAMILIES = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2),
}
BUDGETS = {"calibration": {"samples": 2, "seqlen": 32}, "evaluation": {"windows": 1, "seqlen": 32}}


@pytest.fixture(scope="module")
def moe_models(settings, token, tmp_path_factory) -> dict[str, str]:
    from transformers import AutoConfig, AutoModelForCausalLM

    names = {}
    for family, extra in FAMILIES.items():
        config = AutoConfig.for_model(family, vocab_size=128, hidden_size=32,
                                      intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, **extra)
        folder = tmp_path_factory.mktemp(family)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        target = settings.models_dir / f"{family}-{token}"
        if not target.exists():
            shutil.copytree(folder, target)
        names[family] = target.name
    return names


def _submit(client, key: str, model: str, step: dict):
    return client.post("/api/v1/jobs", headers=auth(key),
                       json={"model": model, "recipe": {"steps": [step], **BUDGETS}})


@pytest.mark.parametrize("family,step,why", [
    ("qwen3_moe", {"method": "lowrank", "rank": 4}, "are not compressed by lowrank"),
    ("qwen3_moe", {"method": "quantize"}, "are not compressed by quantize"),
    ("gpt_oss", {"method": "gptq"}, "are stored fused (3-D) by this checkpoint"),
    ("gpt_oss", {"method": "rtn", "include": [r"experts\.gate_up_proj\.1$"]},
     "are stored fused (3-D)"),
    ("qwen3_moe", {"method": "awq", "symmetric": False}, "without their zero points"),
])
def test_unhandled_experts_are_a_422_naming_method_and_kind(client, app, keys, moe_models,
                                                            family, step, why) -> None:
    queued = app.state.queue.count
    response = _submit(client, keys["alice"], moe_models[family], step)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:4] == ["body", "recipe", "steps", 0]
    assert error["msg"].startswith(f"{step['method']}: ")
    assert "selected expert matrices (layer kind: experts" in error["msg"]
    assert why in error["msg"] and "exclude: ['experts']" in error["msg"]
    assert app.state.queue.count == queued


@pytest.mark.parametrize("family,step", [
    ("qwen3_moe", {"method": "wanda", "sparsity": 0.5}),
    ("qwen3_moe", {"method": "gptq"}),
    ("qwen3_moe", {"method": "lowrank", "rank": 4, "exclude": ["experts"]}),
    ("gpt_oss", {"method": "sparsegpt", "sparsity": 0.5}),
    ("gpt_oss", {"method": "gptq", "exclude": ["experts"]}),
    ("qwen3_moe", {"method": "awq", "symmetric": False, "exclude": ["experts"]}),
])
def test_what_a_method_handles_passes(settings, moe_models, family, step) -> None:
    recipe = Recipe.model_validate({"steps": [step], **BUDGETS})
    path = str(settings.models_dir / moe_models[family])
    assert admission_errors(path, recipe, Limits(64 * 1024**3)) == []


def test_routers_are_out_of_the_default_selection_at_submission(settings, moe_models) -> None:
    """Naming only the routers selects them (a recipe may); excluding every other layer
    leaves nothing by default, so that step is refused as one that changes nothing."""
    path = str(settings.models_dir / moe_models["qwen3_moe"])
    recipe = Recipe.model_validate({"steps": [{"method": "magnitude", "sparsity": 0.5,
                                               "exclude": ["self_attn", "experts"]}], **BUDGETS})
    (error,) = admission_errors(path, recipe, None)
    assert "no layer of this model matches" in error[1]
    named = Recipe.model_validate({"steps": [{"method": "magnitude", "sparsity": 0.5,
                                              "include": [r"mlp\.gate$"]}], **BUDGETS})
    assert admission_errors(path, named, None) == []
    assert Path(path, "config.json").is_file()
