"""Server-Sent Events fed by the job store's pub/sub channel, one subscription per process.

A `Broadcaster` holds the API process's only subscription to the channel, on a connection of
its own, and fans each message out to every open stream's bounded queue: a thousand open
streams cost one Redis connection, and submission (which needs connections from the pool)
keeps working whatever the streams do. A stream registers with the broadcaster, which is
subscribed by then, before it reads the current state, so no update between the two is lost;
an update seen both ways is sent once. A stream that falls too far behind, or a lost Redis
connection, ends the stream; the browser's EventSource reconnects and starts from the current
state. Every frame's data is a `JobView`; the event name says whether the job changed (`job`)
or was deleted (`deleted`). A comment every few seconds keeps proxies from closing the
connection and notices a closed client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError
from starlette.responses import StreamingResponse

from jobs.connection import async_redis_client
from jobs.records import FINISHED, JobRecord, JobView
from jobs.store import parse_event

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0
QUEUE_LENGTH = 256  # messages a stream may fall behind before it is ended
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # and no proxy buffer
_CLOSED = None  # what a stream's queue receives when the broadcaster drops it


def sse(record: JobRecord, event: str = "job") -> bytes:
    return f"event: {event}\ndata: {JobView.of(record).model_dump_json()}\n\n".encode()


class Broadcaster:
    """The process's one subscription to `channel`, fanned out to per-stream queues."""

    def __init__(self, url: str, channel: str) -> None:
        self.url, self.channel = url, channel
        self.listeners: set[asyncio.Queue[bytes | None]] = set()
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def join(self, timeout: float = 5.0) -> asyncio.Queue[bytes | None]:
        """A queue that receives every message from now on; raises RedisError if the
        subscription cannot be made."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            raise RedisError("cannot subscribe to job events") from None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_LENGTH)
        self.listeners.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.listeners.discard(queue)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._task

    async def _run(self) -> None:
        pause = 0.5
        while True:
            client = async_redis_client(self.url)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(self.channel)
                self.ready.set()
                pause = 0.5
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._fan_out(message["data"])
            except RedisError as exc:
                log.warning("job events: Redis unavailable (%s); retrying", exc)
            finally:
                self.ready.clear()
                self._drop_all()
                with contextlib.suppress(RedisError):
                    await client.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)

    def _fan_out(self, data: bytes) -> None:
        for queue in list(self.listeners):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # too slow a reader: end its stream, it reconnects
                self._drop(queue)

    def _drop(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.listeners.discard(queue)
        with contextlib.suppress(asyncio.QueueEmpty):
            while queue.full():
                queue.get_nowait()
        queue.put_nowait(_CLOSED)

    def _drop_all(self) -> None:
        for queue in list(self.listeners):
            self._drop(queue)


def broadcaster(state: Any) -> Broadcaster:
    """The app's broadcaster for the running event loop (a new loop gets a new one)."""
    loop = asyncio.get_running_loop()
    current = getattr(state, "broadcaster", None)
    if current is None or getattr(state, "broadcaster_loop", None) is not loop:
        current = Broadcaster(state.settings.redis_url, state.store.keys.events())
        state.broadcaster, state.broadcaster_loop = current, loop
    return current


async def job_updates(
    hub: Broadcaster,
    queue: asyncio.Queue[bytes | None],
    wanted: Callable[[JobRecord], bool],
    initial: Callable[[], list[JobRecord]],
    is_disconnected: Callable[[], Awaitable[bool]],
    until_finished: bool = False,
) -> AsyncIterator[bytes]:
    """Yield SSE frames: the current records, then every update `wanted` accepts."""
    try:
        yield b": subscribed\n\n"  # a client may now act and be sure to see the result
        sent: dict[str, str] = {}  # job id -> updated_at of the last frame sent for it
        for record in await asyncio.to_thread(initial):
            sent[record.id] = record.updated_at
            yield sse(record)
            if until_finished and record.state in FINISHED:
                return
        idle = 0.0
        while not await is_disconnected():
            try:
                data = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                idle += 1.0
                if idle >= KEEPALIVE_S:
                    idle = 0.0
                    yield b": keepalive\n\n"
                continue
            if data is _CLOSED:
                return
            record, deleted = parse_event(data)
            if not wanted(record) or (not deleted and _seen(sent, record)):
                continue
            yield sse(record, "deleted" if deleted else "job")
            if until_finished and (deleted or record.state in FINISHED):
                return
    finally:
        hub.leave(queue)


def _seen(sent: dict[str, str], record: JobRecord) -> bool:
    """True for a change already sent: one published between the subscription and the read
    of the current state arrives twice otherwise. Timestamps are ISO UTC, so they sort."""
    if record.updated_at <= sent.get(record.id, ""):
        return True
    sent[record.id] = record.updated_at
    return False


class LeasedStream(StreamingResponse):
    """A streaming response that gives back its lease (see `service.quotas`) when it ends,
    however it ends: finished, client gone, or never started."""

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def events_response(request: Any, key: str, wanted: Callable[[JobRecord], bool],
                          initial: Callable[[], list[JobRecord]],
                          until_finished: bool = False) -> StreamingResponse:
    """An SSE response on the process's shared subscription, under the key's stream bound."""
    release = request.app.state.stream_leases.take(key)
    try:
        hub = broadcaster(request.app.state)
        queue = await hub.join()
    except BaseException:
        release()
        raise
    stream = job_updates(hub, queue, wanted, initial, request.is_disconnected,
                         until_finished=until_finished)
    return LeasedStream(stream, release, media_type="text/event-stream", headers=SSE_HEADERS)
