"""Refuse malformed URLs before any route sees them: every bad byte in a URL is a 4xx.

Path parameters reach `pathlib` and `os` (artifact files, the dashboard's static files), and
a NUL there raised "embedded null byte", which surfaced as a 500 with a traceback; the fix
belongs here, once, rather than in each route. This ASGI middleware reads the URL as the
client sent it (`raw_path`, percent-decoded to bytes) and answers, in the one error shape of
`service.errors`:

- 404 when the path is not strict UTF-8 (servers decode it with replacement characters, so
  a route would otherwise see U+FFFD where the client sent a broken byte or an encoded lone
  surrogate) or holds a character a name may not hold (`compressors.safe_strings`: controls,
  lone surrogates, bidi formatting): nothing this service serves is named so, so the
  resource does not exist;
- 422 naming `["query", <name>]` when a query parameter's name or value breaks the same
  rules: every query parameter here is a name, a path, a choice or a number, so a control
  character in one is a malformed parameter rather than an unknown resource. (A future
  free-text parameter would need to use the label rules instead.)

Bodies are left to the routes' own models (`SafeName`, `SafeLabel`, `TextRef`), which name
the offending field.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

from compressors.safe_strings import refused_character
from service import errors

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SafeUrls:
    """404 for a malformed URL path, 422 for a malformed query parameter (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if path_problem(scope) is not None:
                await errors.error_response(404, "not found", "not_found")(scope, receive, send)
                return
            query = query_problem(scope.get("query_string", b""))
            if query is not None:
                await errors.error_response(422, [query], "value_error")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _text(raw: bytes) -> str | None:
    """`raw`, percent-decoded, as strict UTF-8 (no lone surrogates), or None."""
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def path_problem(scope: Scope) -> str | None:
    """What is wrong with the request's path, or None."""
    raw = scope.get("raw_path")
    text = _text(raw) if isinstance(raw, bytes) else scope.get("path", "")
    if text is None:
        return "the path is not valid UTF-8"
    return refused_character(text)


def query_problem(query: bytes) -> dict[str, Any] | None:
    """An error item for the first malformed query parameter, or None."""
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name = _text(raw_name.replace(b"+", b" "))
        value = _text(raw_value.replace(b"+", b" "))
        if name is None or refused_character(name) is not None:
            return {"loc": ["query"], "msg": "a query parameter's name is not valid UTF-8 or "
                    "holds a control, bidi or surrogate character", "type": "value_error"}
        problem = "is not valid UTF-8" if value is None else refused_character(value)
        if problem is not None:
            return {"loc": ["query", name], "msg": f"the value {problem}",
                    "type": "value_error"}
    return None
