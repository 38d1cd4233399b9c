"""One error shape for every failure, and no failure that escapes as a bare 500.

Every error body is `{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}`, FastAPI's own
validation shape, whether it comes from validation, a route's `HTTPException`, Redis being
down (503 with `Retry-After`) or a bug (500, logged, nothing of the exception shown). Messages
are capped and validation errors never carry the input back: a 50 MB field gets a short
answer, and nothing a client sent is reflected beyond a short prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

log = logging.getLogger(__name__)

MAX_MESSAGE = 300  # characters of one error message
MAX_ERRORS = 20  # errors listed in one response
MAX_LOC_PART = 64  # characters of one location part (a dict key a client chose)
RETRY_AFTER_S = 5


class ErrorItem(BaseModel):
    """One problem: where (`loc`, a path into the request) and what (`msg`)."""

    loc: list[str | int] = Field(description="path to the offending input; [] for the request")
    msg: str
    type: str = Field("error", description="a machine-readable kind")


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: list[ErrorItem]


_MEANING = {
    400: "the request is malformed", 401: "no valid API key was presented",
    403: "the key may not do this (an admin key is required)",
    404: "no such resource, or not this key's", 409: "conflicts with the resource's state",
    413: "the body is larger than the limit", 422: "a field is invalid; `loc` names it",
    429: "this key holds too much at once; retry after `Retry-After` seconds",
    503: "the job store (Redis) is unavailable; retry after `Retry-After` seconds",
}


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error codes, each with the one error body."""
    return {code: {"model": ErrorBody, "description": _MEANING[code]} for code in codes}


def _clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _loc(parts: Iterable[Any]) -> list[str | int]:
    return [p if isinstance(p, int) else _clip(str(p), MAX_LOC_PART) for p in parts]


def error_items(errors: Sequence[Any] | str | None, kind: str = "error") -> list[dict[str, Any]]:
    """Normalise a detail (a string, or a list of dicts with loc/msg) into the one shape."""
    if errors is None or isinstance(errors, str):
        return [{"loc": [], "msg": _clip(errors or "error"), "type": kind}]
    items = []
    for error in list(errors)[:MAX_ERRORS]:
        if isinstance(error, dict):
            items.append({"loc": _loc(error.get("loc", ())),
                          "msg": _clip(str(error.get("msg", ""))),
                          "type": str(error.get("type", kind))[:64]})
        else:
            items.append({"loc": [], "msg": _clip(str(error)), "type": kind})
    return items


def error_response(code: int, errors: Sequence[Any] | str | None, kind: str = "error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": error_items(errors, kind)}, status_code=code, headers=headers)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    kind = {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
            413: "too_large", 429: "too_many", 503: "unavailable"}.get(exc.status_code, "error")
    return error_response(exc.status_code, exc.detail, kind, getattr(exc, "headers", None))


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # `exc.errors()` carries each offending `input` (and pydantic's `ctx`): never sent back.
    return error_response(status.HTTP_422_UNPROCESSABLE_CONTENT, exc.errors(), "value_error")


async def _redis_down(_request: Request, exc: RedisError) -> JSONResponse:
    log.warning("Redis unavailable: %s", exc)
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the job store (Redis) is unavailable; retry shortly", "unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, RedisError):  # wrapped inside a dependency or middleware
        return await _redis_down(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR,
                          "internal error; the server log has the details", "internal")


def install(app: FastAPI) -> None:
    """Register the handlers on `app` (Starlette's HTTPException covers FastAPI's, 404, 405)."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_down)
    app.add_exception_handler(Exception, _bug)
