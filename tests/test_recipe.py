"""Recipes are validated at the edge: unknown keys and out-of-range values name the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compressors.recipe import parse_recipe


def test_contract_example_parses():
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5},
                                     {"method": "magnitude", "sparsity": 0.5, "pattern": "2:4"}]})
    assert [s.method for s in recipe.steps] == ["wanda", "magnitude"]
    assert recipe.calibration.samples == 32 and recipe.calibration.seqlen == 512
    assert recipe.evaluation.windows == 40


def test_yaml_text_parses(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("steps:\n  - method: wanda\n    pattern: '4:8'\ncalibration:\n  samples: 8\n")
    recipe = parse_recipe(path)
    assert recipe.steps[0].target_sparsity == 0.5
    assert recipe.calibration.samples == 8


@pytest.mark.parametrize(
    ("step", "field", "words"),
    [
        ({"method": "wanda", "sparsity": 1.5}, "sparsity", "less than 1"),
        ({"method": "wanda", "sparsity": -0.1}, "sparsity", "greater than or equal to 0"),
        ({"method": "wanda", "sparsity": 0.5, "spars": 1}, "spars", "Extra inputs"),
        ({"method": "magnitude", "pattern": "4:4"}, "pattern", "1 <= N < M"),
        ({"method": "magnitude", "pattern": "half"}, "pattern", "N:M"),
        ({"method": "wanda"}, "sparsity", "required"),
        ({"method": "magnitude", "sparsity": 0.5, "scope": "col"}, "scope", "matrix"),
    ],
)
def test_bad_steps_name_the_field(step, field, words):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [step]})
    assert field in str(error.value) and words in str(error.value)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [{"method": "prune-all"}]})
    assert "magnitude" in str(error.value) and "wanda" in str(error.value)


def test_unknown_top_level_key_and_empty_steps():
    with pytest.raises(ValidationError, match="stepz"):
        parse_recipe({"stepz": []})
    with pytest.raises(ValidationError, match="steps"):
        parse_recipe({"steps": []})
    with pytest.raises(ValidationError, match="samples"):
        parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5}],
                      "calibration": {"samples": 0}})
