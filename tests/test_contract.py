"""Every method through the same checks: valid recipe in, loadable checkpoint and report out."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

import compressors
from compressors.methods import METHODS
from compressors.recipe import parse_recipe
from tests.conftest import SMALL_BUDGETS
from tests.contract_cases import CASES

REQUIRED_FILES = ["config.json", "compression_report.json", "recipe.json", "README.md",
                  "manifest.json", "tokenizer_config.json"]
PARAMS = [
    pytest.param(case, arch, id=f"{case.id}-{arch}")
    for cases in CASES.values() for case in cases for arch in case.architectures
]


def test_every_registered_method_has_a_contract_case():
    assert set(CASES) == set(METHODS)


@pytest.mark.parametrize(("case", "arch"), PARAMS)
def test_method_contract(case, arch, request, tmp_path):
    folder = request.getfixturevalue(f"tiny_{arch}_folder")
    recipe = parse_recipe({"steps": case.steps, **SMALL_BUDGETS})
    out = tmp_path / "out"
    report = compressors.compress(folder, recipe, out, device="cpu").to_json()

    for name in REQUIRED_FILES:
        assert (out / name).is_file(), name
    assert any(out.glob("*.safetensors"))
    on_disk = json.loads((out / "compression_report.json").read_text())
    assert on_disk["steps"][0]["method"] == case.steps[0]["method"]
    assert [s["method"] for s in on_disk["steps"]] == [s["method"] for s in case.steps]
    for key in ("before", "after"):
        metrics = on_disk["metrics"][key]
        for field in ("perplexity", "parameters", "nonzero_parameters", "size_bytes"):
            assert metrics[field] is not None and metrics[field] > 0, (key, field)
    assert on_disk["peak_memory_bytes"] > 0 and on_disk["seconds_total"] > 0
    assert parse_recipe(json.loads((out / "recipe.json").read_text())) == recipe
    assert (out / "README.md").read_text().startswith("---\nbase_model:")

    model = compressors.load(out)
    ids = torch.randint(0, 1000, (1, 16))
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()
    if case.check:
        case.check(model, report)


@pytest.mark.parametrize("case", [c for cases in CASES.values() for c in cases], ids=lambda c: c.id)
def test_invalid_step_names_its_field(case):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [case.invalid_step]})
    assert case.invalid_field in str(error.value)
