"""The character rules for names, paths and labels (`compressors.safe_strings`), and the URL
guard built on them (`service.safe_urls`), without an app: the fuzz test in
tests/service/test_fuzz_inputs.py checks them through every route."""

from __future__ import annotations

import pytest

from compressors.recipe.text import parse_source
from compressors.safe_strings import can_name_a_file, refused_character
from service.safe_urls import path_problem, query_problem


@pytest.mark.parametrize(("value", "words"), [
    ("a\x00b", "control character (U+0000) at position 1"),
    ("\x1b[2J", "control character (U+001B) at position 0"),
    ("a\x7f", "control character (U+007F)"), ("a\x85", "control character (U+0085)"),
    ("a\ud800", "lone surrogate (U+D800)"), ("a\udcff", "lone surrogate (U+DCFF)"),
    ("abc\u202etxt", "bidirectional formatting character (U+202E)"),
    ("a\u2066b", "bidirectional formatting character (U+2066)"),
    ("a\tb", "control character (U+0009)"),
])
def test_names_refuse_controls_surrogates_and_bidi(value, words):
    problem = refused_character(value)
    assert problem is not None and words in problem
    assert problem.isprintable()  # names the character by code point, never echoes it
    assert not can_name_a_file(value)


def test_labels_keep_whitespace_and_bidi_but_not_other_controls():
    for fine in ("a\tb", "line\r\nbreak", "\u202bשלום\u202c", "café 🙂"):
        assert refused_character(fine, free_text=True) is None
    for bad in ("a\x00", "a\x1b", "a\x0b", "a\x7f", "a\x9f", "a\ud800"):
        assert refused_character(bad, free_text=True) is not None


def test_file_names_the_os_cannot_look_up():
    assert can_name_a_file("/srv/models/tiny") and can_name_a_file("café/naïve.txt")
    assert can_name_a_file("a" * 255) and not can_name_a_file("a" * 256)
    assert not can_name_a_file("é" * 128)  # 256 bytes in UTF-8
    assert not can_name_a_file("/a" * 2048)  # 4096 bytes in all


def test_parse_source_refuses_what_no_file_is_named():
    """`parse_source` is also called on values that never went through pydantic (the worker,
    `TextRef(...)` built in code): the same rules hold there."""
    for value in ("/srv/a\x00b", "/srv/a\ud800", "/srv/" + "a" * 256):
        with pytest.raises(ValueError, match=r"text reference holds|not a usable file path"):
            parse_source(value)
    assert parse_source("/srv/texts/a b.txt").path is not None


@pytest.mark.parametrize(("raw", "bad"), [
    (b"/static/app.js", False), (b"/api/v1/jobs/abc/files/sub%20dir/x.json", False),
    (b"/static/caf%C3%A9", False), (b"/static/a%00b", True), (b"/static/%ff", True),
    (b"/static/%ed%a0%80", True), (b"/static/a%1bb", True), (b"/static/a%e2%80%aeb", True),
])
def test_url_paths(raw, bad):
    assert (path_problem({"raw_path": raw, "path": ""}) is not None) is bad


def test_query_strings_name_the_parameter():
    assert query_problem(b"") is None and query_problem(b"state=queued&limit=5") is None
    assert query_problem(b"model=caf%C3%A9+au+lait&expired") is None
    assert query_problem(b"limit=5&state=a%00b")["loc"] == ["query", "state"]
    assert query_problem(b"next=%ff")["loc"] == ["query", "next"]
    assert query_problem(b"a%00=1")["loc"] == ["query"]
