"""Redis clients: one pooled sync client per URL and process, asyncio clients on demand.

redis-py clients are thread-safe and pool their sockets, so a single instance per process keeps
the number of connections small under many concurrent requests. asyncio clients belong to the
event loop that opened them, so they are made per loop by whoever owns the loop (the API app).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from redis import Redis
from redis.asyncio import BlockingConnectionPool as AsyncBlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline


@lru_cache(maxsize=8)
def redis_client(url: str) -> Redis:
    """A pooled client; `health_check_interval` notices a restarted Redis early.

    No `CLIENT SETINFO` on connect (`lib_name`/`lib_version` None): Redis before 7.2 (Debian
    12 ships 7.0) answers it with an error, which redis-py ignores on a plain connection but
    which RQ's pubsub thread, reconnecting after a Redis restart, raised as a traceback."""
    return Redis.from_url(url, health_check_interval=30, socket_keepalive=True,
                          lib_name=None, lib_version=None)


ASYNC_POOL_SIZE = 64  # connections one API process's asyncio client may open
ASYNC_POOL_WAIT_S = 10.0


def async_redis_client(url: str) -> AsyncRedis:
    """A new asyncio client for the running event loop, on a bounded pool that makes a burst
    of requests wait for a free connection (redis-py's default pool refuses the 101st
    concurrent request with "Too many connections", which was a 500 for every key)."""
    pool = AsyncBlockingConnectionPool.from_url(url, max_connections=ASYNC_POOL_SIZE,
                                                timeout=ASYNC_POOL_WAIT_S, lib_name=None,
                                                lib_version=None)
    return AsyncRedis(connection_pool=pool)


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
