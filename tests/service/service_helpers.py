"""Helpers the service tests share: polling, auth headers, submitting and reading SSE."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FAST_JOB = {
    "steps": [{"method": "magnitude", "sparsity": 0.5}],
    "calibration": {"samples": 2, "seqlen": 64},
    "evaluation": {"windows": 2, "seqlen": 64},
}


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, every: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy; a generous deadline only guards against hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not reached within {timeout} s")


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def submit(client, key: str, model: str = "tiny", recipe: dict | None = None,
           name: str = "") -> dict[str, Any]:
    response = client.post("/api/v1/jobs", headers=auth(key),
                           json={"model": model, "recipe": recipe or FAST_JOB, "name": name})
    assert response.status_code == 202, response.text
    return response.json()


def job_state(client, key: str, job_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=auth(key))
    assert response.status_code == 200, response.text
    return response.json()


def wait_state(client, key: str, job_id: str, states: tuple[str, ...],
               timeout: float = 300.0) -> dict[str, Any]:
    return wait_for(lambda: (r := job_state(client, key, job_id))["state"] in states and r,
                    timeout=timeout)


def read_sse(client, key: str, url: str) -> list[dict[str, Any]]:
    """Read an SSE stream to its end; returns the `data` payloads."""
    records = []
    with client.stream("GET", url, headers=auth(key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                records.append(json.loads(line[len("data: "):]))
    return records


class PrivateRedis:
    """A redis-server of this test's own, which it may kill -9 and start again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
             str(self.folder), "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        from redis import Redis

        client = Redis.from_url(self.url)
        wait_for(lambda: pings(client), timeout=20, every=0.05)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


def pings(client) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
