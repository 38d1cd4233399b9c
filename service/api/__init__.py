"""The REST API under /api/v1; every route here needs an API key."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from jobs.records import API_PREFIX
from service import errors
from service.api import jobs, models, system
from service.api.deps import require_principal


def api_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(require_principal)],
                       responses=errors.responses(400, 401, 413, 422, 429, 503))
    router.include_router(jobs.router)
    router.include_router(models.router)
    router.include_router(system.router)
    return router
