"""Routes about the service itself: methods, the caller, workers, and the all-jobs stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service import events
from service import queue as rq_queue
from service.api.deps import PrincipalDep, QueueDep, RedisDep
from service.api.jobs import public
from service.connection import async_redis

router = APIRouter(tags=["service"])


@router.get("/methods")
def list_methods() -> dict[str, Any]:
    """Each compression method's summary, job stage and parameter JSON schema."""
    from compressors.registry import method_schemas

    return {"methods": method_schemas()}


@router.get("/me")
def me(principal: PrincipalDep) -> dict[str, Any]:
    return {"name": principal.name, "admin": principal.admin}


@router.get("/workers")
def workers(redis: RedisDep, queue: QueueDep) -> dict[str, Any]:
    """Workers online (heartbeat age, current job) and how many jobs wait in the queue."""
    return {"workers": rq_queue.workers(redis, queue), "queue_depth": queue.count}


@router.get("/events")
async def all_events(request: Request, principal: PrincipalDep) -> StreamingResponse:
    """SSE of every change to the jobs this key can see (data: the job record JSON)."""
    store = request.app.state.store

    def initial() -> list[dict[str, Any]]:
        owner = None if principal.admin else principal.name
        return [r for r in store.get_many(store.list_ids(owner)[:50]) if r["state"] in
                ("queued", "running")]

    stream = events.job_updates(
        async_redis(request.app.state), store.keys.events(),
        lambda r: principal.can_see(r.get("owner", "")), initial, request.is_disconnected,
        decorate=public,
    )
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
