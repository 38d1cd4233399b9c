"""Layer regexes run on RE2 (`compressors.recipe.patterns`): linear time whatever the pattern,
the same engine in recipe validation, `select_layers` and `layer_sparsity`, and refusals that
say which construct RE2 lacks. The hostile patterns are the ones an outside probe sent; with
Python's `re` each of them takes minutes to years on these names, so finishing at all (within
the generous pytest-timeout below) is the proof, not a timing threshold.
"""

from __future__ import annotations

import re

import pytest
import re2
from pydantic import ValidationError

from compressors.recipe import parse_recipe, patterns
from compressors.recipe.per_layer import layer_patterns

PROBE = r"^model\.layers\.2(?:[\w.]+)+!"  # nested quantifiers that never find their "!"
NESTED = "(a+)+!"


def test_patterns_compile_with_re2_and_are_cached():
    compiled = patterns.compile_pattern(r"mlp\.(gate|up)_proj")
    assert isinstance(compiled, re2._Regexp)
    assert patterns.compile_pattern(r"mlp\.(gate|up)_proj") is compiled
    # syntax only RE2 has: a Unicode class and \z; Python's re (3.11) refuses both
    for only_re2 in (r"\pL+_proj\z", r"^lm_head\z"):
        with pytest.raises(re.error):
            re.compile(only_re2)
        assert patterns.refusal(only_re2) is None
    assert patterns.search(r"mlp\.\pL+_proj\z", "model.layers.0.mlp.up_proj")


@pytest.mark.timeout(60)
def test_catastrophic_patterns_finish_on_long_names():
    long_name = "model.layers.2" + ".mlp_proj" * 1200  # 10 814 characters, no "!"
    assert len(long_name) > 10_000
    assert not patterns.search_any([PROBE] * 8, long_name)
    assert not patterns.search(NESTED, "a" * 10_000)
    assert not patterns.search(NESTED, "a" * 200_000)
    assert patterns.search(NESTED, "a" * 10_000 + "!")
    assert patterns.search(PROBE, long_name + "!")


@pytest.mark.parametrize(("pattern", "why"), [
    ("(?=mlp)", "lookahead"),
    ("mlp(?!.*down)", "negative lookahead"),
    ("(?<=mlp\\.)up", "lookbehind"),
    ("(?<!mlp\\.)up", "negative lookbehind"),
    (r"(proj)\.\1", "backreference \\1"),
    ("(?P<x>q)(?P=x)", "backreference (?P=name)"),
    ("(?>a+)b", "atomic group"),
    ("a++", "possessive"),
    (r"proj\Z", "write \\z"),
    ("(?x) a", "not RE2 syntax"),
    (r"\pL{1000}", "too large"),
    ("(?:(?:a{10}){10}){11}", "above 1000"),
    ("mlp(", "invalid syntax (missing )"),
])
def test_refused_patterns_say_why(pattern, why):
    reason = patterns.refusal(pattern)
    assert reason is not None and why in reason, reason
    if "support" in reason:
        assert "RE2" in reason and "linear-time" in reason
    with pytest.raises(patterns.InvalidPattern, match="is not a valid regex") as refused:
        patterns.compile_pattern(pattern)
    assert repr(pattern)[:40] in str(refused.value)


LLAMA_NAMES = [f"model.layers.{i}.{kind}" for i in range(12) for kind in (
    "self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]


@pytest.mark.parametrize(("pattern", "expected"), [
    (r"mlp\.(gate|up)_proj", lambda n: ".mlp.gate_proj" in n or ".mlp.up_proj" in n),
    (r"layers\.[0-3]\.", lambda n: n.split(".")[2] in {"0", "1", "2", "3"}),
    (r"^model\.layers\.\d+\.self_attn", lambda n: ".self_attn." in n),
    ("down_proj$", lambda n: n.endswith("down_proj")),
    ("(?i)Q_PROJ", lambda n: n.endswith("q_proj")),
])
def test_ordinary_patterns_search_like_re(pattern, expected):
    chosen = [n for n in LLAMA_NAMES if patterns.search(pattern, n)]
    assert chosen == [n for n in LLAMA_NAMES if expected(n)]
    assert chosen == [n for n in LLAMA_NAMES if re.search(pattern, n)]  # unanchored, as before


def test_recipe_validation_names_field_pattern_and_reason():
    with pytest.raises(ValidationError) as include:
        parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5,
                                 "include": [r"mlp\.", "mlp(?=\\.up)"]}]})
    (error,) = include.value.errors()
    assert error["loc"] == ("steps", 0, "wanda", "include")
    assert "include: 'mlp(?=\\\\.up)'" in error["msg"] and "lookahead" in error["msg"]

    with pytest.raises(ValidationError) as keys:
        parse_recipe({"steps": [{"method": "magnitude", "sparsity": 0.5,
                                 "layer_sparsity": {"up": 0.3, "(?<!mlp)proj": 0.5}}]})
    (error,) = keys.value.errors()
    assert error["loc"] == ("steps", 0, "magnitude", "layer_sparsity")
    assert "'(?<!mlp)proj'" in error["msg"] and "lookbehind" in error["msg"]

    # the probe is valid RE2: validation accepts it (and matching it is linear)
    parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5, "exclude": [PROBE] * 8}]})


@pytest.mark.timeout(60)
def test_sparsity_for_matches_with_re2():
    from compressors.methods.magnitude.config import MagnitudeConfig

    config = MagnitudeConfig(sparsity=0.25, layer_sparsity={
        NESTED: 0.9, r"^model\.layers\.0\.[\pL_]+\.q_proj\z": 0.75})
    assert config.sparsity_for("model.layers.0.self_attn.q_proj") == 0.75
    assert config.sparsity_for("model.layers.0.self_attn.q_proj.x") == 0.25
    assert config.sparsity_for("a" * 50_000) == 0.25  # (a+)+! on 50k "a": linear, no match


@pytest.mark.timeout(120)
def test_select_layers_matches_with_re2():
    from compressors.engine.modules import select_layers
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    ups = select_layers(model, include=[r"mlp\.\pL+_proj\z"], exclude=[r"(gate|down)_proj\z"])
    assert sorted(ups) == ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    with pytest.raises(patterns.InvalidPattern, match="lookahead"):
        select_layers(model, include=["(?=mlp)"])
    with pytest.raises(ValueError, match="no Linear-like layer matches"):
        select_layers(model, include=[PROBE] * 8)


def test_search_writes_valid_re2_that_matches_exactly_its_names():
    names = ["model.layers.0.mlp.down_proj", "model.layers.3.mlp.down_proj",
             "model.layers.1.odd-name #1.proj", "model.layers.2.odd-name #1.proj",
             "encoder.ünïcode.w", "weird(name)[x]{y}*+?|^$\\z", "lm_head"]
    others = ["model.layers.1.mlp.down_proj", "model.layers.10.mlp.down_proj",
              "model.layers.0.odd-name #1.proj", "encoder.unicode.w", "lm_head.x"]
    written = layer_patterns(names)
    assert all(patterns.refusal(p) is None for p in written), written
    assert [n for n in names + others if patterns.search_any(written, n)] == names


def test_names_and_patterns_that_are_not_unicode_never_raise():
    """A hostile safetensors header may name a tensor with a lone surrogate (JSON allows it)."""
    assert "Unicode" in (patterns.refusal("proj\udcff") or "")
    assert patterns.search("^model", "model.\udcff.proj")
    assert not patterns.search("zzz", "model.\udcff.proj")
