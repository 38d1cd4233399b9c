"""Open health endpoints and the admin-only Prometheus metrics.

/healthz and /readyz are open (load balancers and Compose health checks carry no key).
/metrics needs an admin key (`Authorization: Bearer` in the Prometheus scrape config): it
counts every owner's jobs, which one team's key should not see.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse

from jobs import queue as rq_queue
from service import errors, metrics
from service.api.deps import AdminDep
from service.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Redis down or no worker"}})
def readyz(request: Request) -> Response:
    """Ready when Redis answers and at least one worker's heartbeat is fresh."""
    state = request.app.state
    try:
        state.redis.ping()
        fresh = rq_queue.fresh_workers(state.queue, state.settings.worker_ttl + 15)
    except Exception as exc:  # any Redis failure means not ready
        body = Readiness(status="unavailable", redis=f"error: {exc}")
        return _readiness(body, status.HTTP_503_SERVICE_UNAVAILABLE)
    body = Readiness(status="ready" if fresh else "no workers", redis="ok", workers=fresh)
    return _readiness(body, status.HTTP_200_OK if fresh else status.HTTP_503_SERVICE_UNAVAILABLE)


def _readiness(body: Readiness, code: int) -> JSONResponse:
    return JSONResponse(body.model_dump(exclude_none=True), status_code=code)


@router.get("/metrics", responses={**errors.responses(401, 403, 503), 200: {
    "content": {"text/plain": {"schema": {"type": "string"}}},
    "description": "Prometheus text exposition format"}})
def prometheus(request: Request, _: AdminDep) -> PlainTextResponse:
    state = request.app.state
    text = metrics.render(state.store, state.queue)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
