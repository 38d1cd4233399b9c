"""Operations probes of issue 14: the stack rides out a Redis restart, RQ's own view of a job
agrees with the service's, and job records do not go stale across retries.

The Redis restart runs against a private `redis-server` on a free port (append-only, like
scripts/serve's), so killing it harms no other test.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from service_helpers import FAST_JOB, PrivateRedis, auth, pings, wait_for

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server to start a private one")


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


SLOW_JOB = {**FAST_JOB, "evaluation": {"windows": 4, "seqlen": 512}}


def test_stack_rides_out_a_redis_restart(private_redis, service_env, settings, workers, token,
                                         tmp_path, tiny_model):
    """kill -9 Redis mid-job: the worker lives, the API says 503 (and /readyz too) until Redis
    is back, then the job finishes and nothing submitted before is lost."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import KeyStore

    ours = settings.model_copy(update={"redis_url": private_redis.url})
    key = KeyStore(Redis.from_url(private_redis.url), ours.key_prefix).create("ops")
    pool = type(workers)({**service_env, "COMPRESSORS_REDIS_URL": private_redis.url}, token,
                         tmp_path)
    try:
        worker = pool.start()
        with TestClient(create_app(ours), raise_server_exceptions=False) as client:
            job = client.post("/api/v1/jobs", headers=auth(key),
                              json={"model": "tiny", "recipe": SLOW_JOB}).json()["id"]
            waiting = client.post("/api/v1/jobs", headers=auth(key),
                                  json={"model": "tiny", "recipe": FAST_JOB}).json()["id"]
            wait_for(lambda: client.get(f"/api/v1/jobs/{job}", headers=auth(key))
                     .json()["state"] == "running", timeout=120)  # its process is loading
            private_redis.kill()
            assert client.get("/readyz").status_code == 503
            down = client.post("/api/v1/jobs", headers=auth(key),
                               json={"model": "tiny", "recipe": FAST_JOB})
            assert down.status_code == 503 and down.headers["retry-after"]
            time.sleep(3)
            assert worker.poll() is None, "the worker died with Redis"
            private_redis.start()
            assert wait_for(lambda: _final(client, key, job), timeout=240) == "succeeded"
            assert worker.poll() is None
            assert wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
            queued = client.get(f"/api/v1/jobs/{waiting}", headers=auth(key)).json()
            assert queued["state"] in ("queued", "running", "succeeded")  # still there
            client.post(f"/api/v1/jobs/{waiting}/cancel", headers=auth(key))
    finally:
        pool.stop_all()


def _final(client, key: str, job_id: str) -> str | None:
    response = client.get(f"/api/v1/jobs/{job_id}", headers=auth(key))
    if response.status_code != 200:
        return None
    state = response.json()["state"]
    return state if state in ("succeeded", "failed", "cancelled") else None


def test_a_job_waiting_for_its_retry_shows_no_stale_progress(settings, redis, monkeypatch):
    """A lost attempt's stage and progress do not stand while the job waits to run again."""
    from jobs.records import JobRecord, JobState, JobUpdate
    from jobs.settings import get_settings
    from jobs.store import JobStore
    from worker.tasks import record_lost_worker

    for name, value in settings.model_dump().items():
        if value is not None:
            monkeypatch.setenv(f"COMPRESSORS_{name.upper()}", str(value))
    get_settings.cache_clear()
    try:
        store = JobStore(redis, settings.key_prefix)
        record = JobRecord.submitted("ops", "", "tiny", "tiny", {"steps": []}, 3)
        store.create(record)
        store.update(record.id, JobUpdate(state=JobState.running, stage="evaluating",
                                          progress=0.7, attempt=1))
        record_lost_worker(record.id, True, "job process died")
        after = store.get(record.id)
        assert after.state == JobState.queued and after.stage is None and after.progress == 0
        store.delete(after)
    finally:
        get_settings.cache_clear()


ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                    reason="scripts/serve would first install .venv")
def test_serve_keeps_redis_restarts_it_and_stops_promptly(tmp_path):
    """scripts/serve: Redis on a port kept in DATA_DIR (the CLI finds it with no REDIS_URL),
    a killed Redis is started again, and Ctrl-C ends everything in seconds without SIGKILL."""
    import os
    import signal
    import sys

    import psutil

    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPRESSORS_") and k != "REDIS_URL"}
    env.update(COMPRESSORS_DATA_DIR=str(data), PORT=str(_free_port()), API_PROCESSES="1",
               COMPRESSORS_KEY_DIR=str(tmp_path / "keys"), COMPRESSORS_WORKER_TTL="16")
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"compressors is running" in (tmp_path / "serve.log").read_bytes()
                 or serve.poll() is not None, timeout=180)
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        port = (data / "redis" / "port").read_text().strip()
        assert (data / "redis" / "url").read_text().strip().endswith(f":{port}/0")
        listed = subprocess.run([sys.executable, "-m", "service", "keys", "list"], cwd=ROOT,
                                env={k: v for k, v in env.items() if k != "PORT"},
                                capture_output=True, text=True, timeout=60)
        assert '"name": "local"' in listed.stdout, listed
        redis_server = next(p for p in psutil.Process(serve.pid).children(recursive=True)
                            if p.name().startswith("redis-server"))
        redis_server.kill()
        wait_for(lambda: b"starting it again" in (tmp_path / "serve.log").read_bytes(), 30)
        client = Redis(port=int(port))
        wait_for(lambda: pings(client), timeout=30)
        before_stop = len((tmp_path / "serve.log").read_bytes())
        began = time.monotonic()
        os.killpg(serve.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        serve.wait(timeout=30)
        took = time.monotonic() - began
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    output = (tmp_path / "serve.log").read_bytes()[before_stop:].decode()
    print(f"serve stopped in {took:.1f} s")
    assert took < 8, f"stopping took {took:.1f} s"
    assert "Killed" not in output and "Traceback" not in output, output[-3000:]
    assert (data / "redis" / "port").read_text().strip() == port  # kept for the next start
