"""One Redis client per URL and process, shared by the API, the worker and the CLI.

redis-py clients are thread-safe and pool their sockets, so a single instance per process keeps
the number of connections small under many concurrent requests.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline


@lru_cache(maxsize=8)
def redis_client(url: str) -> Redis:
    """A pooled client; `health_check_interval` notices a restarted Redis early."""
    return Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def redis_from_settings() -> Redis:
    """The client for the configured REDIS_URL."""
    from service.settings import get_settings

    return redis_client(get_settings().redis_url)


def async_redis(state: Any) -> AsyncRedis:
    """The app's asyncio client for the running event loop.

    asyncio connections belong to the loop that opened them; a test client or server restart
    brings a new loop, which gets a new client instead of a broken one.
    """
    loop = asyncio.get_running_loop()
    client = getattr(state, "aredis", None)
    if client is None or getattr(state, "aredis_loop", None) is not loop:
        client = AsyncRedis.from_url(state.settings.redis_url)
        state.aredis, state.aredis_loop = client, loop
    return client


async def execute_recorded(client: AsyncRedis, recorded: Pipeline) -> list[Any]:
    """Send the commands queued on an unexecuted sync pipeline as one asyncio transaction.

    RQ builds its writes only through the sync client; recording them on a pipeline that is never
    executed and sending them here keeps a request handler on the event loop, which costs less
    CPU than the thread-pool hop a sync handler needs (bench/service.py).
    """
    async with client.pipeline(transaction=True) as pipe:
        for args, options in recorded.command_stack:
            pipe.execute_command(*args, **options)
        return await pipe.execute()
