"""Text references: one type for every recipe field that names a text, one resolver, one policy.

The schema walk below is the guard that keeps it so: every string field of every method's
config must be a choice, a `TextRef`, or a declared pattern kind, and every `TextRef` of a
parsed recipe, whichever method it belongs to, is reached by the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from compressors import assets
from compressors.methods import METHODS
from compressors.recipe import Recipe, parse_recipe
from compressors.recipe.text import (
    TextRef,
    load_text,
    load_text_parts,
    parse_source,
    text_policy_violations,
    text_references,
)

STRING_KINDS = {"regex", "nm-pattern"}


def _string_fields(schema: dict[str, Any], defs: dict[str, Any], path: str = ""):
    """(path, schema) of every string-typed value in a JSON schema, through refs and unions."""
    if "$ref" in schema:
        yield from _string_fields(defs[schema["$ref"].rsplit("/", 1)[1]], defs, path)
        return
    if schema.get("type") == "string":
        yield path, schema
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            yield from _string_fields(option, defs, path)
    for name, sub in schema.get("properties", {}).items():
        yield from _string_fields(sub, defs, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _string_fields(schema["items"], defs, f"{path}[]")


def test_every_string_field_of_every_recipe_schema_is_a_known_kind():
    schema = Recipe.model_json_schema()
    defs = schema.get("$defs", {})
    found = list(_string_fields(schema, defs))
    assert any(s.get("format") == "text-ref" for _, s in found)
    free = [path for path, s in found
            if "enum" not in s and "const" not in s and s.get("format") != "text-ref"
            and s.get("x-string-kind") not in STRING_KINDS]
    assert not free, f"string fields that are neither a choice, a TextRef nor a pattern: {free}"


def test_every_methods_text_fields_are_reached_by_the_policy(tmp_path):
    """Fill every TextRef field of every method with a forbidden file: the policy flags each."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the admin key")
    for name, method in METHODS.items():
        fields = [f for f, info in method.config.model_fields.items()
                  if "TextRef" in str(info.annotation)]
        if not fields:
            continue
        base = _minimal_step(name)
        recipe = parse_recipe({"steps": [{**base, **dict.fromkeys(fields, str(secret))}]})
        flagged = {loc for loc, _ in text_policy_violations(recipe, [tmp_path / "allowed"])}
        assert flagged == {("steps", 0, f) for f in fields}, name


def _minimal_step(name: str) -> dict[str, Any]:
    return {"magnitude": {"sparsity": 0.5}, "wanda": {"sparsity": 0.5},
            "sparsegpt": {"sparsity": 0.5}, "lowrank": {"rank": 4}}.get(name, {}) | {
                "method": name}


def test_policy_covers_calibration_and_evaluation_and_allows_inside_roots(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    inside = allowed / "text.txt"
    inside.write_text("hello " * 100)
    recipe = parse_recipe({"steps": [{"method": "perp", "text": str(inside)}],
                           "calibration": {"text": "/etc/passwd"},
                           "evaluation": {"text": str(allowed / ".." / "escape.txt")}})
    locs = [loc for loc, _ in text_policy_violations(recipe, [allowed])]
    assert locs == [("calibration", "text"), ("evaluation", "text")]
    (allowed / "link.txt").symlink_to("/etc/passwd")
    linked = parse_recipe({"steps": [{"method": "perp", "second_text": str(allowed / "link.txt")}]})
    assert [loc for loc, _ in text_policy_violations(linked, [allowed])] == [
        ("steps", 0, "second_text")]
    missing = parse_recipe({"steps": [{"method": "perp", "text": str(allowed / "nope.txt")}]})
    [(_loc, message)] = text_policy_violations(missing, [allowed])
    assert "no such text file" in message and "nope" not in message


@pytest.mark.parametrize(("spec", "message"), [
    ("sotu:abc", "not a known text"),
    ("sotu:3000-3001", "no State of the Union speeches"),
    ("sotu:1999-1900", "before the start year"),
    ("http://example.com/x.txt", "not a known text"),
    ("", "at least 1 character"),
    ("/srv/a\x00b", "control character (U+0000)"),
    ("/srv/a\x1b[2J", "control character (U+001B)"),
    ("/srv/a\ud800", "valid string"),  # pydantic refuses it first; parse_source would too
    ("/srv/report\u202etxt.exe", "bidirectional formatting character (U+202E)"),
    ("/srv/" + "a" * 300 + "/b.txt", "not a usable file path"),
])
def test_bad_references_fail_at_parse_time_naming_the_field(spec, message):
    with pytest.raises(ValidationError) as error:
        parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5}],
                      "calibration": {"text": spec}})
    assert message in str(error.value) and "calibration.text" in str(error.value)


def test_pydoc_topics_is_a_text_everywhere():
    recipe = parse_recipe({"steps": [{"method": "wanda", "sparsity": 0.5}],
                           "calibration": {"text": "pydoc:topics"}})
    assert isinstance(recipe.calibration.text, TextRef)
    assert "pydoc:topics" in [ref for _, ref in text_references(recipe)]
    assert "lambda" in load_text("pydoc:topics")


def test_sotu_corpora_split_by_year():
    files = assets.sotu_speech_files()
    calibration = [p for p in files if 1900 <= int(p.name[:4]) <= 1999]
    evaluation = [p for p in files if int(p.name[:4]) >= 2000]
    assert calibration and evaluation
    assert parse_source("sotu:2000-").first_year == 2000
    parts = load_text_parts("sotu:1900-1999")
    assert len(parts) == len(calibration)
    assert parts[0] == calibration[0].read_text(encoding="utf-8")
    assert all(p.startswith("\n\n") for p in parts[1:])
    text = load_text("sotu:2000-")
    assert text.startswith(evaluation[0].read_text(encoding="utf-8")[:200])


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="text file not found"):
        load_text(str(tmp_path / "no-such-file.txt"))
    assert parse_source(str(Path("relative") / "file.txt")).kind == "file"
