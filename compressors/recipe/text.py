"""The one way a recipe names a text: the `TextRef` type, its resolver, and the file policy.

Every recipe field that names a text (calibration, evaluation, PERP's training and second
texts, and any future one) is a `TextRef`. A reference is a built-in corpus, checked when the
recipe is parsed, or a path to a UTF-8 file:

- `sotu:START-END`: State of the Union speeches of those years, inclusive (`END` may be empty,
  "to the last"), joined in file-name order with a blank line between speeches;
- `pydoc:topics`: the Python language reference that CPython ships in `pydoc_data` (the text
  `help()` shows), a text of another kind than the speeches, always available offline;
- anything else is a file path.

A reference never holds a control character, a lone surrogate or a bidi formatting character,
and a file path must be one the operating system can look up (`compressors.safe_strings`):
such a value is refused when the recipe is parsed, naming the field, instead of raising
"embedded null byte" or ENAMETOOLONG from the policy's `stat` calls.

A parsed recipe is walked for every `TextRef` value (`text_references`), so the service's
policy (`text_policy_violations`: files only under the allowed server folders) reaches every
such field of every method by construction, at submission and again inside the job.
Torch-free: the API runs all of this.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from compressors import assets
from compressors.safe_strings import (
    NAME_MAX,
    NAME_PATTERN,
    PATH_MAX,
    can_name_a_file,
    refused_character,
)

CALIBRATION_TEXT = "sotu:1900-1999"
EVALUATION_TEXT = "sotu:2000-"
PYDOC_TOPICS = "pydoc:topics"
MAX_REFERENCE_LENGTH = 1024
MAX_TEXT_FILE_BYTES = 256 * 1024**2

_SOTU = re.compile(r"^sotu:(\d{4})-(\d{4})?$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_KNOWN = "sotu:YYYY-YYYY (or sotu:YYYY- for every year since), pydoc:topics, or a file path"

Location = tuple[str | int, ...]


@dataclass(frozen=True)
class TextSource:
    """What a reference points at, once parsed."""

    kind: Literal["sotu", "pydoc", "file"]
    first_year: int | None = None
    last_year: int | None = None
    path: Path | None = None


@lru_cache(maxsize=1)
def _speech_years() -> tuple[int, ...]:
    """Years of the bundled speeches (file names start with the year), read once."""
    return tuple(sorted({int(p.name.split("-", 1)[0]) for p in assets.sotu_speech_files()}))


def parse_source(value: str) -> TextSource:
    """Parse a reference; built-in corpora must exist. Raises ValueError saying what is allowed."""
    problem = refused_character(value)
    if problem is not None:
        raise ValueError(f"a text reference {problem}")
    if value == PYDOC_TOPICS:
        return TextSource("pydoc")
    match = _SOTU.match(value)
    if match:
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else None
        if last is not None and last < first:
            raise ValueError(f"sotu:{first}-{last}: the end year is before the start year")
        years = _speech_years()
        if not any(first <= y and (last is None or y <= last) for y in years):
            raise ValueError(f"{value[:40]}: no State of the Union speeches in those years "
                             f"(they span {years[0]}-{years[-1]})")
        return TextSource("sotu", first, last)
    scheme = _SCHEME.match(value)
    if scheme and len(scheme.group(1)) > 1:
        raise ValueError(f"{value[:40]!r} is not a known text; use {_KNOWN}")
    if not can_name_a_file(value):
        raise ValueError(f"not a usable file path: a path is under {PATH_MAX} bytes, each "
                         f"part of it at most {NAME_MAX}")
    return TextSource("file", path=Path(value))


class TextRef(str):
    """A recipe field that names a text: validated syntax, and a JSON schema that says so
    (`"format": "text-ref"`, and the characters a name may not hold as a `pattern`), so
    clients and the schema test can tell it from other strings."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validate,
            core_schema.str_schema(min_length=1, max_length=MAX_REFERENCE_LENGTH),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        json_schema.update(format="text-ref", pattern=NAME_PATTERN,
                           examples=[CALIBRATION_TEXT, PYDOC_TOPICS])
        return json_schema

    @classmethod
    def _validate(cls, value: str) -> TextRef:
        parse_source(value)
        return cls(value)

    @property
    def source(self) -> TextSource:
        return parse_source(self)


def text_references(value: Any, loc: Location = ()) -> Iterator[tuple[Location, TextRef]]:
    """Every `TextRef` inside a parsed recipe (or any part of one), with its location."""
    if isinstance(value, TextRef):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from text_references(getattr(value, name), (*loc, name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from text_references(item, (*loc, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from text_references(item, (*loc, str(key)))


def text_policy_violations(
    recipe: BaseModel, allowed_roots: Sequence[Path], denied_roots: Sequence[Path] = ()
) -> list[tuple[Location, str]]:
    """(location, message) for every text file the recipe names outside `allowed_roots`, or
    inside one of `denied_roots` (the service's own data: keys, uploads of every owner,
    Redis files), which wins even where an allowed root contains it.

    Paths are resolved (symlinks and `..` followed) before the check; messages never echo the
    path, so a refusal tells nothing about the server's files. Relative paths are refused
    outright: what they name depends on the reader's working directory.
    """
    roots = [Path(root).resolve() for root in allowed_roots]
    denied = [Path(root).resolve() for root in denied_roots]
    violations: list[tuple[Location, str]] = []
    for loc, ref in text_references(recipe):
        source = ref.source
        if source.kind != "file" or source.path is None:
            continue
        real = source.path.expanduser().resolve()
        if (not source.path.is_absolute()
                or not any(real.is_relative_to(root) for root in roots)
                or any(real.is_relative_to(root) for root in denied)):
            violations.append((loc, "a text must be a built-in corpus (sotu:YYYY-YYYY, "
                               "pydoc:topics) or a file under an allowed server folder"))
        elif (size := _file_size(real)) is None:
            violations.append((loc, "no such text file under the allowed server folders"))
        elif size > MAX_TEXT_FILE_BYTES:
            violations.append((loc, f"text files are limited to {MAX_TEXT_FILE_BYTES} bytes"))
    return violations


def _file_size(path: Path) -> int | None:
    """Bytes of the regular file at `path`, or None where there is none to read: absent, not a
    file, or behind a folder the service may not enter (Python 3.11's `is_file` raises
    PermissionError there, which would otherwise be a 500 instead of a refusal)."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def load_text_parts(ref: str) -> list[str]:
    """The text of `ref` in pieces whose concatenation is the text.

    A corpus of speeches comes one piece per speech, each after the first starting with the
    blank line that joins it to the one before; tokenizing piece by piece keeps peak memory low
    (see `engine.windows.tokenize`). `pydoc:topics` and a file are one piece each.
    """
    source = parse_source(ref)
    if source.kind == "pydoc":
        from pydoc_data.topics import topics

        return ["\n\n".join(topics[key] for key in sorted(topics))]
    if source.kind == "sotu":
        files = [p for p in assets.sotu_speech_files()
                 if _year(p) >= source.first_year
                 and (source.last_year is None or _year(p) <= source.last_year)]
        texts = [path.read_text(encoding="utf-8") for path in files]
        return texts[:1] + ["\n\n" + text for text in texts[1:]]
    path = source.path
    if path is None or not path.is_file():
        raise ValueError("text file not found; a text is " + _KNOWN)
    if path.stat().st_size > MAX_TEXT_FILE_BYTES:
        raise ValueError(f"text files are limited to {MAX_TEXT_FILE_BYTES} bytes")
    return [path.read_text(encoding="utf-8")]


def load_text(ref: str) -> str:
    return "".join(load_text_parts(ref))


def _year(path: Path) -> int:
    return int(path.name.split("-", 1)[0])
