"""The FastAPI application: API, open health routes, and the dashboard when it is installed."""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.exceptions import RedisError

from compressors.version import __version__
from jobs.admission import LimitsCache
from jobs.connection import redis_client
from jobs.queue import get_queue
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from service import errors
from service.api import api_router, health, session
from service.auth import KeyStore
from service.body_limit import BodyLimit
from service.quotas import Leases
from service.safe_urls import SafeUrls
from service.submission_checks import SubmissionChecks

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    import compressors.recipe  # noqa: F401 - warm the validator before the first request

    with contextlib.suppress(RedisError):  # RQ asks the server version once per queue; ask now
        app.state.queue.get_redis_server_version()
    await app.state.submission_checks.warm()
    # Everything alive now (imports, the app) lives as long as the process; frozen, it is
    # skipped by the collector instead of walked on every full collection, which showed up
    # as request stalls under load (bench/service.py).
    gc.collect()
    gc.freeze()
    yield
    hub = getattr(app.state, "broadcaster", None)
    if hub is not None:
        await hub.close()
    client = getattr(app.state, "aredis", None)
    if client is not None:
        await client.aclose()


def _include_dashboard(app: FastAPI) -> None:
    """The dashboard is optional: include its router if `service.dashboard` provides one."""
    try:
        dashboard = importlib.import_module("service.dashboard")
    except ModuleNotFoundError as exc:
        if exc.name != "service.dashboard":
            raise
        return
    router = getattr(dashboard, "router", None)
    if router is not None:
        app.include_router(router)  # serves its own /static/{name}, confined to one folder


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app on one Redis connection pool shared by every request."""
    settings = settings or get_settings()
    app = FastAPI(title="compressors", version=__version__, lifespan=_lifespan,
                  description="Model-compression jobs: submit a model and a recipe, get back a "
                              "compressed checkpoint and a report.")
    redis = redis_client(settings.redis_url)
    app.state.settings = settings
    app.state.redis = redis
    app.state.store = JobStore(redis, settings.key_prefix)
    app.state.keys = KeyStore(redis, settings.key_prefix)
    app.state.queue = get_queue(redis, settings)
    app.state.limits = LimitsCache(redis, settings)
    app.state.submission_checks = SubmissionChecks(settings.submission_check_processes,
                                                   settings.submission_check_seconds)
    app.state.stream_leases = Leases("open event streams", settings.max_streams_per_key,
                                     "MAX_STREAMS_PER_KEY")
    app.state.upload_leases = Leases("uploads in progress", settings.max_uploads_per_key,
                                     "MAX_UPLOADS_PER_KEY")
    errors.install(app)
    app.add_middleware(BodyLimit, limit=settings.max_json_bytes)
    app.add_middleware(SafeUrls)  # outermost: a malformed URL is refused before its body is read
    app.include_router(health.router)
    app.include_router(session.router)
    app.include_router(api_router())
    _include_dashboard(app)
    return app
