"""Open health endpoints and the admin-only Prometheus metrics.

/healthz and /readyz are open (load balancers and Compose health checks carry no key).
/metrics needs an admin key (`Authorization: Bearer` in the Prometheus scrape config): it
counts every owner's jobs, which one team's key should not see.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse

from service import metrics
from service import queue as rq_queue
from service.api.deps import AdminDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, Any]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> Response:
    """Ready when Redis answers and at least one worker's heartbeat is fresh."""
    state = request.app.state
    try:
        state.redis.ping()
        fresh = rq_queue.fresh_workers(state.redis, state.queue, state.settings.worker_ttl + 15)
    except Exception as exc:  # any Redis failure means not ready
        return JSONResponse({"status": "unavailable", "redis": f"error: {exc}"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
    body = {"status": "ready" if fresh else "no workers", "redis": "ok", "workers": fresh}
    code = status.HTTP_200_OK if fresh else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body, status_code=code)


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request, _: AdminDep) -> PlainTextResponse:
    state = request.app.state
    text = metrics.render(state.redis, state.store, state.queue)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
