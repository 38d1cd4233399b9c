"""Sign-in for browsers: trade an API key for the HttpOnly `compressors_key` cookie.

The cookie is SameSite=Strict, so another site cannot make a signed-in browser send requests
that carry it; scripts on the page cannot read it (HttpOnly).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from service.auth import COOKIE_NAME

router = APIRouter(prefix="/api/v1", tags=["session"])


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200)


@router.post("/session")
def sign_in(body: SignIn, request: Request, response: Response) -> dict[str, Any]:
    principal = request.app.state.keys.verify(body.key)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
    response.set_cookie(COOKIE_NAME, body.key, httponly=True, samesite="strict",
                        secure=request.app.state.settings.cookie_secure, max_age=30 * 86400)
    return {"name": principal.name, "admin": principal.admin}


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def sign_out() -> Response:
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE_NAME)
    return response
