"""Layer regexes cannot stall the API: submission validates and matches them with RE2
(`compressors.recipe.patterns`), so the outside probe's hostile `include` is answered at once,
and a construct RE2 lacks (lookahead) is a 422 at the include field that names the pattern
and why.

With Python's `re`, the probe against the long tensor names below backtracks for longer than
the universe has existed: the submission checks would answer 503 at their deadline and leave
a thread spinning. The answers here must be the ordinary 422s, within a generous timeout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from service_helpers import FAST_JOB, auth

PROBE = r"^model\.layers\.2(?:[\w.]+)+!"


def _post(client, key: str, model: str, step: dict[str, Any]):
    recipe = {**FAST_JOB, "steps": [{"method": "wanda", "sparsity": 0.5, **step}]}
    return client.post("/api/v1/jobs", headers=auth(key), json={"model": model,
                                                                  "recipe": recipe})


@pytest.fixture
def long_names_model(settings, tiny_model) -> Iterator[str]:
    """A model folder whose 2-D weights have 70-character runs of `[\\w.]` after
    `model.layers.N.`, what the nested quantifiers backtrack over; removed afterwards so other
    tests see the models folder as it was."""
    import numpy as np
    from safetensors.numpy import save_file

    name = "long-tensor-names"
    folder = settings.models_dir / name
    folder.mkdir()
    try:
        shutil.copy(Path(tiny_model) / "config.json", folder / "config.json")
        run = "a_" * 35
        tensors = {f"model.layers.{i}.{run}.{kind}.weight": np.zeros((4, 4), np.float32)
                   for i in range(4) for kind in ("q_proj", "up_proj")}
        save_file(tensors, str(folder / "model.safetensors"))
        assert json.loads((folder / "config.json").read_text())
        yield name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _no_match(response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-3:] == ["steps", 0, "include"], error
    assert "no layer of this model matches" in error["msg"]
    return error


@pytest.mark.timeout(120)
def test_the_probes_hostile_include_is_answered_at_once(client, app, keys, tiny_model):
    _no_match(_post(client, keys["alice"], "tiny", {"include": [PROBE] * 8}))
    assert app.state.queue.count == 0


@pytest.mark.timeout(120)
def test_hostile_patterns_against_long_tensor_names_are_linear(client, app, keys,
                                                               long_names_model):
    for step in ({"include": [PROBE] * 8}, {"include": ["(a+)+!"] * 64},
                 {"exclude": [r"^model\.layers\.\d(?:[\w.]+)+$"] + [PROBE] * 63}):
        _no_match(_post(client, keys["alice"], long_names_model, step))
    assert app.state.queue.count == 0


def test_lookahead_is_a_422_at_the_include_field_naming_pattern_and_reason(client, app, keys,
                                                                           tiny_model):
    pattern = r"mlp\.(?=up)"
    response = _post(client, keys["alice"], "tiny", {"include": [r"self_attn\.", pattern]})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:3] == ["body", "recipe", "steps"] and error["loc"][-1] == "include"
    assert repr(pattern) in error["msg"] and "lookahead" in error["msg"]
    assert "RE2" in error["msg"]

    backreference = _post(client, keys["alice"], "tiny",
                          {"layer_sparsity": {r"(proj)\1": 0.5}})
    assert backreference.status_code == 422, backreference.text
    (error,) = backreference.json()["detail"]
    assert error["loc"][-1] == "layer_sparsity" and "backreference" in error["msg"]
    assert app.state.queue.count == 0
