"""A real service stack (API process, worker process, real Redis) and headless Chromium.

The API and the worker run as separate processes, configured only by environment variables,
against a Redis database index and key prefix of their own; both are cleaned up afterwards.
Chromium is Debian's package (`scripts/install-browser`), driven by Playwright with
`executable_path`; no browser is ever downloaded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REDIS_DB = 9  # this suite's own database index on the shared test Redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    """A running API + worker, with two API keys of different owners."""

    base_url: str
    env: dict[str, str]
    keys: dict[str, str]
    data_dir: Path
    logs: dict[str, Path] = field(default_factory=dict)

    def client(self, who: str) -> httpx.Client:
        """An HTTP client authenticated as `who` (header auth, as scripts use it)."""
        return httpx.Client(base_url=self.base_url + "/api/v1", timeout=30.0,
                            headers={"X-API-Key": self.keys[who]})

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.logs.get(name)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"API exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError(f"API did not answer within {seconds} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _cleanup_redis(url: str, prefix: str, queue: str, worker_name: str) -> None:
    from redis import Redis

    redis = Redis.from_url(url)
    try:
        doomed: list[bytes] = []
        for pattern in (f"{prefix}:*", f"rq:*{queue}*", f"rq:worker:{worker_name}*"):
            doomed += list(redis.scan_iter(match=pattern, count=500))
        job_ids = [k.decode().rsplit(":", 1)[-1] for k in doomed
                   if k.decode().startswith(f"{prefix}:job:")]
        for job_id in job_ids:
            doomed += list(redis.scan_iter(match=f"rq:*{job_id}*", count=500))
        if doomed:
            redis.delete(*set(doomed))
        redis.srem("rq:workers", f"rq:worker:{worker_name}")
        redis.srem("rq:queues", f"rq:queue:{queue}")
    finally:
        redis.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Iterator[Stack]:
    """Start `uvicorn service.app:create_app` and `python -m worker`; create two keys."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: run scripts/install-browser")
    pytest.importorskip("playwright.sync_api")
    data_dir = tmp_path_factory.mktemp("dashboard-data")
    tag = uuid.uuid4().hex[:8]
    prefix, queue, worker_name = f"dashtest-{tag}", f"dashtest-{tag}", f"dashtest-worker-{tag}"
    redis_url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    port = _free_port()
    env = {
        **os.environ,
        "COMPRESSORS_REDIS_URL": redis_url,
        "COMPRESSORS_DATA_DIR": str(data_dir),
        "COMPRESSORS_KEY_PREFIX": prefix,
        "COMPRESSORS_QUEUE_NAME": queue,
        "COMPRESSORS_TORCH_THREADS": "2",
        "COMPRESSORS_PROGRESS_INTERVAL": "1.0",
        "COMPRESSORS_DEVICE": "cpu",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    from redis import Redis

    from service.auth import KeyStore

    redis = Redis.from_url(redis_url)
    store = KeyStore(redis, prefix)
    keys = {"alice": store.create("alice"), "bob": store.create("bob")}
    redis.close()

    logs = {"api": data_dir / "api.log", "worker": data_dir / "worker.log"}
    procs: list[subprocess.Popen] = []
    try:
        with logs["api"].open("wb") as api_log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                cwd=ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        with logs["worker"].open("wb") as worker_log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "worker", "--name", worker_name],
                cwd=ROOT, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
                start_new_session=True,
            ))
        base_url = f"http://127.0.0.1:{port}"
        _wait_http(base_url + "/signin", procs[0], logs["api"])
        yield Stack(base_url=base_url, env=env, keys=keys, data_dir=data_dir, logs=logs)
    finally:
        for proc in procs:
            _stop(proc)
        _cleanup_redis(redis_url, prefix, queue, worker_name)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium under Playwright (no `playwright install`, no network)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed: run scripts/install-browser")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """`test-output/screenshots/` under the repository root (git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
