"""A cap on request bodies, before any route parses one.

JSON bodies (a recipe, a sign-in) are small; without a cap a 10 MB recipe is parsed, stored
and then served back on every job page. This ASGI middleware answers 413 as soon as a body
passes the limit: at once when `Content-Length` says so, or while a chunked body streams in.
Model uploads (`POST /api/v1/models`) stream to disk under their own, larger limit and are
left alone.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PATHS = frozenset({"/api/v1/models"})
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 and the one error shape."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in _WITH_BODY
                or scope["path"] in UPLOAD_PATHS):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        body, more, messages = 0, True, []
        while more:  # at most `limit` bytes are buffered, then replayed to the app
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += len(message.get("body", b""))
            if body > self.limit:
                await self._refuse(send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(messages, receive), send)

    async def _refuse(self, send: Send) -> None:
        payload = json.dumps({"detail": [{
            "loc": ["body"], "type": "too_large",
            "msg": f"request body larger than the limit of {self.limit} bytes "
                   "(MAX_JSON_BYTES)"}]}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
