"""Resource exhaustion (issue 14, item 8): one key cannot starve the others.

A real API process (`python -m service`) on a private Redis: 200 event streams held open by
20 keys cost the API one Redis connection, not 200, and submission keeps answering while they
are open; beyond its bounds a key gets 429 with Retry-After (streams, queued jobs, uploads in
progress), and what it held is given back when it lets go.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from service_helpers import FAST_JOB, PrivateRedis, wait_for

from jobs.connection import ASYNC_POOL_SIZE

ROOT = Path(__file__).resolve().parents[2]
KEYS, STREAMS_EACH, STREAM_LIMIT = 20, 10, 16

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server to start a private one")


@pytest.fixture
def api(tmp_path, service_env, tiny_model) -> Iterator[tuple[str, PrivateRedis]]:
    server = PrivateRedis(tmp_path)
    server.start()
    port = _free_port()
    env = {**os.environ, **service_env, "COMPRESSORS_REDIS_URL": server.url,
           "COMPRESSORS_MAX_STREAMS_PER_KEY": str(STREAM_LIMIT),
           "COMPRESSORS_MAX_ACTIVE_JOBS_PER_KEY": "3", "COMPRESSORS_MAX_UPLOADS_PER_KEY": "1"}
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port),
                             "--log-level", "warning"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base) or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, (tmp_path / "api.log").read_text()
        yield base, server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.kill()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _keys(server: PrivateRedis, prefix: str) -> list[str]:
    from service.auth import KeyStore

    store = KeyStore(Redis.from_url(server.url), prefix)
    return [store.create(f"load{i}") for i in range(KEYS)]


async def _open_stream(client: httpx.AsyncClient, key: str, stack) -> int:
    """Open /events and wait for its first frame; the stream stays open on `stack`."""
    request = client.build_request("GET", "/api/v1/events", headers={"X-API-Key": key})
    response = await client.send(request, stream=True)
    stack.push_async_callback(response.aclose)
    if response.status_code == 200:
        lines = response.aiter_lines()
        stack.push_async_callback(lines.aclose)  # and keep it referenced: unread, not closed
        assert (await anext(lines)).startswith(": subscribed")
    return response.status_code


async def _probe(base: str, server: PrivateRedis, keys: list[str]) -> dict:
    from contextlib import AsyncExitStack

    redis = Redis.from_url(server.url)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        before = redis.info("clients")["connected_clients"]
        async with AsyncExitStack() as stack:
            began = time.monotonic()
            codes = await asyncio.gather(*(_open_stream(client, key, stack)
                                           for key in keys for _ in range(STREAMS_EACH)))
            opened_s = time.monotonic() - began
            held = redis.info("clients")["connected_clients"] - before
            subscribers = sum(1 for c in redis.client_list() if int(c.get("sub", 0)) > 0)
            extra = [await _open_stream(client, keys[0], stack)
                     for _ in range(STREAM_LIMIT - STREAMS_EACH + 1)]
            began = time.monotonic()
            submitted = await client.post("/api/v1/jobs", headers={"X-API-Key": keys[1]},
                                          json={"model": "tiny", "recipe": FAST_JOB})
            submit_s = time.monotonic() - began
            more = [await client.post("/api/v1/jobs", headers={"X-API-Key": keys[1]},
                                      json={"model": "tiny", "recipe": FAST_JOB})
                    for _ in range(3)]
        after_close = await _open_stream_once(client, keys[0])
    return {"codes": codes, "opened_s": opened_s, "held": held, "subscribers": subscribers,
            "extra": extra,
            "submitted": submitted, "submit_s": submit_s, "more": more,
            "after_close": after_close}


async def _open_stream_once(client: httpx.AsyncClient, key: str) -> int:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        return await _open_stream(client, key, stack)


def test_many_streams_cost_one_connection_and_keys_are_bounded(api, settings):
    base, server = api
    keys = _keys(server, settings.key_prefix)
    result = asyncio.run(_probe(base, server, keys))
    print(f"\n{KEYS * STREAMS_EACH} streams opened in {result['opened_s']:.2f} s; Redis "
          f"connections of the API: {result['held']} (subscribed: {result['subscribers']}); "
          f"a submission meanwhile took "
          f"{result['submit_s'] * 1000:.0f} ms; load average {os.getloadavg()}")
    assert result["codes"] == [200] * (KEYS * STREAMS_EACH)
    assert result["subscribers"] == 1, "each stream holds a subscription of its own"
    # What the API holds is its bounded pools (asyncio: ASYNC_POOL_SIZE; threads: anyio's 40),
    # idle after the burst of requests, never one per stream.
    assert result["held"] <= ASYNC_POOL_SIZE + 40 + 1 < KEYS * STREAMS_EACH
    assert result["extra"][:-1] == [200] * (STREAM_LIMIT - STREAMS_EACH)
    assert result["extra"][-1] == 429  # the 17th stream of one key
    assert result["submitted"].status_code == 202, result["submitted"].text
    assert [r.status_code for r in result["more"]] == [202, 202, 429]
    refused = result["more"][-1]
    assert refused.headers["retry-after"].isdigit()
    assert "MAX_ACTIVE_JOBS_PER_KEY" in refused.json()["detail"][0]["msg"]
    assert result["after_close"] == 200  # the leases came back when the streams closed


def test_one_upload_in_progress_per_key(api, settings):
    base, server = api
    key = _keys(server, settings.key_prefix)[0]

    async def probe() -> tuple[int, int]:
        release = asyncio.Event()

        async def slow_body():
            yield b"\0" * 1024
            await release.wait()

        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            first = asyncio.create_task(client.post(
                "/api/v1/models?name=slow", headers={"X-API-Key": key}, content=slow_body()))
            await asyncio.sleep(1.0)
            second = await client.post("/api/v1/models?name=other",
                                       headers={"X-API-Key": key}, content=b"x" * 10)
            release.set()
            return (await first).status_code, second.status_code

    first, second = asyncio.run(probe())
    assert second == 429 and first in (400, 422)  # the first was received, then refused
