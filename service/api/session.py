"""Sign-in for browsers: trade an API key for the HttpOnly `compressors_key` cookie.

The cookie is SameSite=Strict, so another site cannot make a signed-in browser send requests
that carry it; scripts on the page cannot read it (HttpOnly).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response, status

from jobs.records import API_PREFIX
from service import errors
from service.api.schemas import Caller, SignIn
from service.auth import clear_key_cookie, set_key_cookie

router = APIRouter(prefix=API_PREFIX, tags=["session"])


@router.post("/session", responses=errors.responses(400, 401, 413, 422, 503))
def sign_in(body: SignIn, request: Request, response: Response) -> Caller:
    principal = request.app.state.keys.verify(body.key)
    if principal is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown API key")
    set_key_cookie(response, body.key, request.app.state.settings.cookie_secure)
    return Caller(name=principal.name, admin=principal.admin)


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def sign_out() -> Response:
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    clear_key_cookie(response)
    return response
