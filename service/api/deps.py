"""Request dependencies: settings, Redis, stores, and the calling key (Annotated aliases).

Dependencies here are `async` on purpose: a sync one would cost a thread-pool hop each.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue

from jobs.connection import async_redis_client
from jobs.records import JobRecord
from jobs.settings import Settings
from jobs.store import JobStore
from service.auth import COOKIE_NAME, KeyStore, Principal, key_from_headers

# The three ways to present a key, declared so OpenAPI lists them as security schemes; the key
# itself is read by `key_from_headers` (one order of precedence, shared with the dashboard).
API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKeyHeader",
                              description="an API key from `python -m service keys create`")
BEARER = HTTPBearer(auto_error=False, scheme_name="Bearer",
                    description="the same API key as `Authorization: Bearer <key>`")
COOKIE = APIKeyCookie(name=COOKIE_NAME, auto_error=False, scheme_name="SessionCookie",
                      description="set by POST /api/v1/session (the dashboard's sign-in)")


def async_redis(state: Any) -> AsyncRedis:
    """The app's asyncio client for the running event loop.

    asyncio connections belong to the loop that opened them; a test client or server restart
    brings a new loop, which gets a new client instead of a broken one.
    """
    loop = asyncio.get_running_loop()
    client = getattr(state, "aredis", None)
    if client is None or getattr(state, "aredis_loop", None) is not loop:
        client = async_redis_client(state.settings.redis_url)
        state.aredis, state.aredis_loop = client, loop
    return client


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_async_redis(request: Request) -> AsyncRedis:
    return async_redis(request.app.state)


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_queue_dep(request: Request) -> Queue:
    return request.app.state.queue


async def require_principal(
    request: Request,
    _header: Annotated[str | None, Security(API_KEY_HEADER)] = None,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
    _cookie: Annotated[str | None, Security(COOKIE)] = None,
) -> Principal:
    """The key's owner, or 401: missing and unknown keys answer the same."""
    keys: KeyStore = request.app.state.keys
    key = key_from_headers(request.headers, request.cookies)
    principal = await keys.averify(async_redis(request.app.state), key)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid API key is required (X-API-Key header, "
            "Authorization: Bearer, or the compressors_key cookie)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


async def require_admin(principal: Annotated[Principal, Depends(require_principal)]) -> Principal:
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "an admin key is required")
    return principal


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RedisDep = Annotated[Redis, Depends(get_redis)]
AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]
StoreDep = Annotated[JobStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue_dep)]
PrincipalDep = Annotated[Principal, Depends(require_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]


def visible_job(store: JobStore, principal: Principal, job_id: str) -> JobRecord:
    """The job's record if this key may see it; otherwise 404 (never 403: no existence leak)."""
    record = store.get(job_id) if len(job_id) <= 64 else None
    if record is None or not principal.can_see(record.owner):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return record
