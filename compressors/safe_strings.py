"""What a string from outside may hold before it names a file, a model or a job.

Strings reach us from HTTP bodies, URLs and recipe files, and some of them end in `open`,
`os.stat` or `Path.resolve`, in log lines and on the dashboard. Some characters have no
business there, and are refused where the string enters (a 422 naming the field) instead of
failing deep inside: a NUL makes every os call raise "embedded null byte", which used to
surface as a 500 with a traceback.

- Control characters (Unicode category Cc: C0, DEL, C1), NUL among them: no file or model name
  holds one, and in a log line or a terminal they forge lines and escape sequences.
- Lone surrogates (category Cs): not characters at all. JSON can carry one (`"\\ud800"`), but
  UTF-8 cannot, so Redis, encoders and the file system would each fail on it differently.
- In names and paths only, the bidirectional formatting characters (U+202A-U+202E,
  U+2066-U+2069): in a name they serve only to make it display as another
  (`report\\u202egpj.exe` shows as `reportexe.jpg`), which is spoofing, never naming.

Free text a person wrote (a job's label) keeps tab, line feed and carriage return (pasted
text carries them, and they harm nothing in a label) and the bidi characters (right-to-left
writing needs them); it still refuses every other control character and the surrogates.

`can_name_a_file` adds what the operating system refuses before it even looks: a path part
longer than NAME_MAX or a whole path longer than PATH_MAX makes `stat` raise ENAMETOOLONG,
which Python 3.11's `Path.is_file` and `Path.exists` pass on instead of answering False.
Torch-free and free of this project's imports: the recipe, the jobs core and the API all use it.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

NAME_MAX = 255  # bytes in one path part (ext4, xfs, btrfs, tmpfs, overlayfs)
PATH_MAX = 4096  # bytes in a whole path, its terminating NUL included (Linux)

_NAME_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")
_TEXT_REFUSED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# The same rules for clients, as JSON-schema patterns (surrogates cannot be written in one).
NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069]*$"
TEXT_PATTERN = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$"


def refused_character(value: str, *, free_text: bool = False) -> str | None:
    """What is wrong with `value` in words (the first refused character, by code point and
    position, never the character itself), or None when it may be used.

    `free_text=True` is for labels people write: tab, line feed, carriage return and the
    bidi characters are then allowed.
    """
    found = (_TEXT_REFUSED if free_text else _NAME_REFUSED).search(value)
    if found is None:
        return None
    char = found.group()
    kind = {"Cc": "a control character", "Cs": "a lone surrogate"}.get(
        unicodedata.category(char), "a bidirectional formatting character")
    return f"holds {kind} (U+{ord(char):04X}) at position {found.start()}"


def can_name_a_file(value: str) -> bool:
    """True when the operating system can look `value` up as a path without raising: no
    refused character (name rules), encodable as a file name, no part over NAME_MAX bytes and
    the whole under PATH_MAX. Whether the file exists is another question."""
    if refused_character(value) is not None:
        return False
    try:
        encoded = os.fsencode(value)
    except UnicodeError:
        return False
    return len(encoded) < PATH_MAX and all(len(part) <= NAME_MAX
                                           for part in encoded.split(b"/"))


def check_name(value: str) -> str:
    """Pydantic validator of a name or a path: raises ValueError saying what is refused."""
    problem = refused_character(value)
    if problem is not None:
        raise ValueError(f"a name or path {problem}")
    return value


def check_label(value: str) -> str:
    """Pydantic validator of free text people write: raises ValueError saying what is refused."""
    problem = refused_character(value, free_text=True)
    if problem is not None:
        raise ValueError(f"the text {problem}")
    return value


SafeName = Annotated[str, AfterValidator(check_name),
                     Field(json_schema_extra={"pattern": NAME_PATTERN})]
"""A string that names a file, a folder or a registry entry (name rules)."""

SafeLabel = Annotated[str, AfterValidator(check_label),
                      Field(json_schema_extra={"pattern": TEXT_PATTERN})]
"""A free-text label a person writes (label rules)."""
