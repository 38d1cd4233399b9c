"""The REST API under /api/v1; every route here needs an API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api import jobs, models, system
from service.api.deps import require_principal

PREFIX = "/api/v1"


def api_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(require_principal)])
    router.include_router(jobs.router)
    router.include_router(models.router)
    router.include_router(system.router)
    return router
