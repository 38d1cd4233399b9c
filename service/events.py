"""Server-Sent Events fed by the job store's pub/sub channel.

Each stream subscribes before it reads the current state, so no update between the two is lost;
it filters the channel to the jobs the key may see and sends a comment every few seconds so
proxies keep the connection open and a closed client is noticed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from redis.asyncio import Redis as AsyncRedis

from service.jobs import FINISHED

KEEPALIVE_S = 10.0


def sse(record: dict[str, Any], event: str = "job") -> bytes:
    return f"event: {event}\ndata: {json.dumps(record)}\n\n".encode()


async def job_updates(
    aredis: AsyncRedis,
    channel: str,
    wanted: Callable[[dict[str, Any]], bool],
    initial: Callable[[], list[dict[str, Any]]],
    is_disconnected: Callable[[], Any],
    until_finished: bool = False,
    decorate: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: r,
) -> AsyncIterator[bytes]:
    """Yield SSE frames: the current records, then every update `wanted` accepts."""
    pubsub = aredis.pubsub()
    await pubsub.subscribe(channel)
    try:
        yield b": subscribed\n\n"  # a client may now act and be sure to see the result
        for record in await asyncio.to_thread(initial):
            yield sse(decorate(record))
            if until_finished and record.get("state") in FINISHED:
                return
        idle = 0.0
        while not await is_disconnected():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield b": keepalive\n\n"
                continue
            record = json.loads(message["data"])
            if not wanted(record):
                continue
            yield sse(decorate(record), "deleted" if record.get("deleted") else "job")
            if until_finished and record.get("state") in FINISHED:
                return
    finally:
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()
