"""Jobs run by real `python -m worker` processes on the real Redis: success and download,
failure, cancel of a running job, and recovery when the worker or its job process is killed."""

from __future__ import annotations

import io
import json
import os
import signal
import tarfile
from pathlib import Path

import psutil
import pytest
from service_helpers import FAST_JOB, auth, job_state, read_sse, submit, wait_for, wait_state

# Evaluation on the tiny model takes a fraction of a second per 512-token window on one thread:
# LONG_JOB runs for minutes (to be cancelled), SLOW_JOB for some seconds (to be killed mid-way).
LONG_JOB = {**FAST_JOB, "evaluation": {"windows": 360, "seqlen": 512}}
SLOW_JOB = {**FAST_JOB, "evaluation": {"windows": 16, "seqlen": 512}}


def _running_in(client, key, job_id, stage="evaluating"):
    record = job_state(client, key, job_id)
    assert record["state"] in ("queued", "running"), record
    return record["state"] == "running" and record["stage"] == stage and record


def _artifact_entries(settings, job_id) -> list[str]:
    return sorted(p.name for p in settings.artifacts_dir.iterdir() if job_id in p.name)


def _horse_of(worker_pid: int) -> psutil.Process | None:
    children = psutil.Process(worker_pid).children()
    return children[0] if children else None


def test_job_succeeds_streams_events_and_downloads(client, keys, workers, tiny_model, settings,
                                                    tmp_path):
    worker = workers.start()
    wait_for(lambda: client.get("/readyz").status_code == 200)
    key = keys["alice"]
    job = submit(client, key, name="happy path")
    events = read_sse(client, key, job["links"]["events"])
    stamps = [e["updated_at"] for e in events]
    assert stamps == sorted(set(stamps)), "an event arrived twice or out of order"
    states = [e["state"] for e in events]
    assert states[-1] == "succeeded", events[-1]
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    record = job_state(client, key, job["id"])
    assert record["attempt"] == 1 and record["started_at"] and record["finished_at"]
    told = [(h["state"], h["stage"]) for h in record["history"]]
    assert told[0] == ("queued", None) and told[1] == ("running", "loading")
    assert told[-1][0] == "succeeded" and ("running", "evaluating") in told
    assert record["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert record["metrics"]["before"]["parameters"] == record["metrics"]["after"]["parameters"]

    report = client.get(f"/api/v1/jobs/{job['id']}/report", headers=auth(key)).json()
    assert report["sparsity"]["total"] == pytest.approx(0.5, abs=0.01)
    files = client.get(f"/api/v1/jobs/{job['id']}/files", headers=auth(key)).json()["files"]
    assert {"model.safetensors", "config.json", "manifest.json", "README.md"} <= {
        f["path"] for f in files}

    tar_bytes = client.get(f"/api/v1/jobs/{job['id']}/artifact", headers=auth(key)).content
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / job["id"]
    manifest = json.loads((folder / "manifest.json").read_text())
    single = client.get(f"/api/v1/jobs/{job['id']}/files/config.json", headers=auth(key))
    assert single.content == (folder / "config.json").read_bytes()
    assert manifest["files"]["model.safetensors"]["bytes"] == (
        folder / "model.safetensors").stat().st_size

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)

    workers_now = client.get("/api/v1/workers", headers=auth(key)).json()["workers"]
    assert len(workers_now) == 1 and workers_now[0]["heartbeat_age_s"] is not None
    metrics = client.get("/metrics", headers=auth(keys["admin"])).text
    assert 'compressors_job_seconds_count{method="magnitude"}' in metrics
    # The worker's parent process ran a job yet never loaded torch (so never touched CUDA).
    maps = Path(f"/proc/{worker.pid}/maps").read_text()
    assert "libtorch" not in maps and "libc10" not in maps


def test_failing_job_is_failed_once_not_retried(client, keys, workers, settings, tiny_model):
    """A model only the job can find fault with (a `model_type` transformers cannot build;
    damaged weights are refused at submission now) fails once, with its kind."""
    import json
    import shutil

    broken = settings.allowed_model_roots()[0] / "broken"
    if not broken.exists():
        shutil.copytree(tiny_model, broken)
        config = json.loads((broken / "config.json").read_text())
        (broken / "config.json").write_text(json.dumps({**config, "model_type": "nosuchmodel"}))
    workers.start()
    job = submit(client, keys["alice"], model=str(broken))
    record = wait_state(client, keys["alice"], job["id"], ("failed", "succeeded"))
    assert record["state"] == "failed" and record["error"]
    assert record["error_kind"] == "unsupported_model", record
    assert record["attempt"] == 1
    assert _artifact_entries(settings, job["id"]) == []
    assert wait_for(lambda: _rq_status(client, job["id"]) == "failed")  # `rq info` agrees


def _rq_status(client, job_id: str) -> str:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    app = client.app
    return Job.fetch(job_id, connection=app.state.redis, serializer=JSONSerializer).get_status()


def test_cancel_running_job_then_worker_takes_next(client, keys, workers, tiny_model, settings):
    key = keys["alice"]
    worker = workers.start()
    long_job = submit(client, key, recipe=LONG_JOB, name="to cancel")
    wait_for(lambda: _running_in(client, key, long_job["id"]), timeout=300)
    horse = _horse_of(worker.pid)
    assert horse is not None
    cancelled = client.post(f"/api/v1/jobs/{long_job['id']}/cancel", headers=auth(key))
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    horse.wait(timeout=60)  # the job's process is really gone
    next_job = submit(client, key, name="after cancel")
    assert wait_state(client, key, next_job["id"], ("succeeded", "failed"))["state"] == "succeeded"
    final = job_state(client, key, long_job["id"])
    assert final["state"] == "cancelled" and final["attempt"] == 1
    assert _artifact_entries(settings, long_job["id"]) == []
    assert _rq_status(client, long_job["id"]) == "canceled"  # RQ's view: not "failed"
    assert _rq_status(client, next_job["id"]) == "finished"


def test_kill_9_worker_mid_job_new_worker_finishes(client, keys, workers, tiny_model, settings):
    key = keys["bob"]
    first = workers.start()
    job = submit(client, key, recipe=SLOW_JOB, name="survives kill -9")
    wait_for(lambda: _running_in(client, key, job["id"]), timeout=300)
    horse = _horse_of(first.pid)
    os.kill(first.pid, signal.SIGKILL)  # the worker dies; its orphaned job process stops itself
    first.wait()
    if horse is not None:
        horse.wait(timeout=60)
    workers.start()
    record = wait_state(client, key, job["id"], ("succeeded", "failed"), timeout=600)
    assert record["state"] == "succeeded", record
    assert record["attempt"] == 2
    entries = _artifact_entries(settings, job["id"])
    assert entries == [job["id"]]  # one artifact, no staging leftovers
    assert not [p for p in settings.artifacts_dir.iterdir() if p.name.startswith(".")]
    from jobs.artifacts import verify_manifest

    assert verify_manifest(settings.artifacts_dir / job["id"])


def test_killed_job_process_is_retried_at_once(client, keys, workers, tiny_model, settings):
    key = keys["bob"]
    worker = workers.start()
    job = submit(client, key, recipe=SLOW_JOB, name="horse killed")
    wait_for(lambda: _running_in(client, key, job["id"]), timeout=300)
    first = job_state(client, key, job["id"])
    horse = _horse_of(worker.pid)
    assert horse is not None
    horse.send_signal(signal.SIGKILL)
    record = wait_state(client, key, job["id"], ("succeeded", "failed"), timeout=600)
    assert record["state"] == "succeeded" and record["attempt"] == 2
    assert record["started_at"] > first["started_at"]  # the attempt that ran, not the first
    assert worker.poll() is None  # the same worker survived and ran the retry
    assert _artifact_entries(settings, job["id"]) == [job["id"]]


def test_job_over_its_timeout_fails_without_retry(keys, workers, tiny_model, settings, redis):
    """JOB_TIMEOUT is enforced in the job process; a timeout is a failure, not a crash to retry."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    strict = create_app(settings.model_copy(update={"job_timeout": 10}))
    with TestClient(strict) as client:
        workers.start()
        job = submit(client, keys["alice"], recipe=LONG_JOB, name="too slow")
        record = wait_state(client, keys["alice"], job["id"], ("failed", "succeeded"))
    assert record["state"] == "failed" and "Timeout" in record["error"]
    assert record["attempt"] == 1
    assert _artifact_entries(settings, job["id"]) == []


def test_worker_rechecks_the_text_policy(client, keys, workers, tiny_model, settings, redis):
    """A recipe that names a forbidden file by the time it runs fails in the worker, unread:
    here its record is rewritten past the API, as a settings change or a bug might leave it."""
    job = submit(client, keys["alice"], name="policy re-check")
    recipe = {**job["recipe"], "evaluation": {**job["recipe"]["evaluation"], "text": "/etc/passwd"}}
    redis.hset(f"{settings.key_prefix}:job:{job['id']}", "recipe", json.dumps(recipe))
    workers.start()
    record = wait_state(client, keys["alice"], job["id"], ("failed", "succeeded"))
    assert record["state"] == "failed" and record["attempt"] == 1
    assert record["error"].startswith("PermissionError: evaluation.text: ")
    assert "/etc" not in record["error"]  # a refusal tells nothing about the server's files
    assert _artifact_entries(settings, job["id"]) == []
