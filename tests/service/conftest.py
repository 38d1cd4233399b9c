"""Fixtures for the job service: the real Redis (db 15, unique prefixes), the app in-process,
real `python -m worker` subprocesses, API keys and a tiny model folder under an allowed root.

Everything a test writes to Redis carries a per-session token (key prefix, queue name, worker
names), and is deleted at the end, so these tests can share the server with other suites.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("COMPRESSORS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
@pytest.fixture(scope="session")
def token() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def service_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def service_env(token: str, service_root: Path) -> dict[str, str]:
    """Environment shared by the in-process app and the worker subprocesses."""
    models = service_root / "models"
    models.mkdir(exist_ok=True)
    return {
        "COMPRESSORS_REDIS_URL": REDIS_URL,
        "COMPRESSORS_DATA_DIR": str(service_root / "data"),
        "COMPRESSORS_MODEL_ROOTS": str(service_root / "roots"),
        "COMPRESSORS_MODELS_DIR": str(models),
        "COMPRESSORS_KEY_PREFIX": f"test-{token}",
        "COMPRESSORS_QUEUE_NAME": f"q-{token}",
        "COMPRESSORS_JOB_TIMEOUT": "600",
        "COMPRESSORS_JOB_RETRIES": "2",
        "COMPRESSORS_WORKER_TTL": "20",
        "COMPRESSORS_JOB_MONITORING_INTERVAL": "1",
        "COMPRESSORS_HEARTBEAT_GRACE": "4",
        "COMPRESSORS_MAINTENANCE_INTERVAL": "2",
        "COMPRESSORS_PROGRESS_INTERVAL": "1",
        "COMPRESSORS_MAX_UPLOAD_BYTES": str(4 * 1024 * 1024),
        "COMPRESSORS_TORCH_THREADS": "1",
        "COMPRESSORS_DEVICE": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="session")
def settings(service_env):
    from jobs.settings import Settings

    (Path(service_env["COMPRESSORS_MODEL_ROOTS"])).mkdir(parents=True, exist_ok=True)
    return Settings(**{k.removeprefix("COMPRESSORS_").lower(): v
                       for k, v in service_env.items() if k.startswith("COMPRESSORS_")})


@pytest.fixture(scope="session")
def redis(settings, token) -> Iterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    client.ping()
    yield client
    _cleanup(client, settings, token)


def _cleanup(client: Redis, settings, token: str) -> None:
    """Delete this session's keys: our prefix, RQ keys naming our queue/workers, our RQ jobs."""
    job_ids = [k.decode().rsplit(":", 1)[1]
               for k in client.scan_iter(f"{settings.key_prefix}:job:*")]
    doomed = set(client.scan_iter(f"{settings.key_prefix}:*"))
    doomed |= set(client.scan_iter(f"rq:*{token}*"))
    for job_id in job_ids:
        doomed |= set(client.scan_iter(f"rq:*{job_id}*"))
    for registry in ("rq:workers", "rq:queues"):
        for member in client.smembers(registry):
            if token in member.decode():
                client.srem(registry, member)
    if doomed:
        client.delete(*doomed)


@pytest.fixture(scope="session")
def app(settings, redis):
    from service.app import create_app

    return create_app(settings)


@pytest.fixture(scope="session")
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def keys(app, token) -> dict[str, str]:
    store = app.state.keys
    return {"alice": store.create(f"alice-{token}"), "bob": store.create(f"bob-{token}"),
            "admin": store.create(f"admin-{token}", admin=True)}


@pytest.fixture(scope="session")
def tiny_model(settings, tiny_llama_folder) -> Path:
    """The tiny Llama placed in the server's models folder, named `tiny` in jobs."""
    import shutil

    target = settings.models_dir / "tiny"
    if not target.exists():
        shutil.copytree(tiny_llama_folder, target)
    return target


class Workers:
    """Starts real `python -m worker` processes and stops them (by pid) at the end."""

    def __init__(self, env: dict[str, str], token: str, log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.token = token
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self) -> subprocess.Popen:
        """Start a worker and wait until it has registered with Redis (or died trying)."""
        from redis import Redis

        name = f"w-{self.token}-{uuid.uuid4().hex[:6]}"
        log = (self.log_dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--name", name, "--log-level", "INFO"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        proc.worker_name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        redis = Redis.from_url(self.env["COMPRESSORS_REDIS_URL"])
        deadline = time.monotonic() + 120
        while not redis.exists(f"rq:worker:{name}") and time.monotonic() < deadline:
            assert proc.poll() is None, f"worker exited; see {self.log_dir / name}.log"
            time.sleep(0.1)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers(service_env, token, tmp_path) -> Iterator[Workers]:
    pool = Workers(service_env, token, tmp_path)
    yield pool
    pool.stop_all()
