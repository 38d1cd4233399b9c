"""Request dependencies: settings, Redis, stores, and the calling key (Annotated aliases)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from redis import Redis
from rq import Queue

from service.auth import KeyStore, Principal, key_from_headers
from service.connection import async_redis
from service.jobs import JobStore
from service.settings import Settings


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_redis(request: Request) -> Redis:
    return request.app.state.redis


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_queue_dep(request: Request) -> Queue:
    return request.app.state.queue


async def require_principal(request: Request) -> Principal:
    """The key's owner, or 401: missing and unknown keys answer the same.

    Dependencies here are `async` on purpose: a sync one would cost a thread-pool hop each.
    """
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
StoreDep = Annotated[JobStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue_dep)]
PrincipalDep = Annotated[Principal, Depends(require_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]


def visible_job(store: JobStore, principal: Principal, job_id: str) -> dict[str, Any]:
    """The job's record if this key may see it; otherwise 404 (never 403: no existence leak)."""
    record = store.get(job_id) if len(job_id) <= 64 else None
    if record is None or not principal.can_see(record["owner"]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return record
