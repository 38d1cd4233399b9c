"""The functions RQ runs: `run_job` in the work horse, `on_rq_failure` after a lost worker.

`run_job` never raises: it records its own failures (bad model, timeout, out of memory) as the
job's `failed` state, so RQ's bounded Retry is left to mean one thing only, "the process running
this job died". torch and the library are imported inside the job, never at module level, so the
RQ parent process that imports this module never initialises CUDA.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from service import artifacts
from service.connection import redis_client
from service.jobs import ACTIVE, JobStore, utcnow
from service.settings import Settings, get_settings
from worker.progress import ProgressWriter


def _store(settings: Settings) -> JobStore:
    return JobStore(redis_client(settings.redis_url), settings.key_prefix)


def run_job(job_id: str) -> str:
    """Run one attempt of a job and leave its record in a final state (or to its successor)."""
    settings = get_settings()
    store = _store(settings)
    record = store.get(job_id)
    if record is None or record["state"] not in ACTIVE:
        return "skipped"
    attempt = int(record["attempt"]) + 1
    started = store.update(job_id, {
        "state": "running", "attempt": attempt, "stage": "loading", "progress": 0.0,
        "message": f"attempt {attempt} started", "started_at": record["started_at"] or utcnow(),
        "worker": os.environ.get("RQ_WORKER_ID"), "updated_at": utcnow(), "error": None,
    }, if_state=ACTIVE)
    if started is None:
        return "skipped"
    began = time.monotonic()
    with ProgressWriter(store, job_id, attempt, settings.progress_interval) as progress:
        try:
            report = _compress_or_reuse(settings, record, progress)
        except Exception as exc:  # recorded for the user; RQ must not retry a bad job
            _finish_failed(store, job_id, attempt, exc)
            return "failed"
    return _finish_succeeded(store, settings, record, attempt, report, time.monotonic() - began)


def _compress_or_reuse(settings: Settings, record: dict[str, Any], progress: Any) -> dict:
    """Publish the artifact, or reuse one a previous attempt completed before it died."""
    destination = artifacts.artifact_dir(settings, record["id"])
    if destination.exists() and artifacts.verify(destination):
        return json.loads((destination / artifacts.REPORT).read_text(encoding="utf-8"))
    if destination.exists():
        artifacts.remove(destination)  # unverifiable: never serve half of one
    import torch

    from compressors.pipeline import compress
    from compressors.recipe import parse_recipe

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    recipe = parse_recipe(record["recipe"])
    return compress(record.get("model_path") or record["model"], recipe, destination,
                    progress=progress, device=settings.device, model_name=record["model"])


def _finish_failed(store: JobStore, job_id: str, attempt: int, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"
    store.update(job_id, {"state": "failed", "error": message[:4000], "message": "failed",
                          "finished_at": utcnow(), "updated_at": utcnow()},
                 if_state=("running",), if_attempt=attempt)


def _finish_succeeded(
    store: JobStore, settings: Settings, record: dict[str, Any], attempt: int,
    report: dict[str, Any], seconds: float,
) -> str:
    done = store.update(record["id"], {
        "state": "succeeded", "stage": "saving", "progress": 1.0, "message": "done",
        "finished_at": utcnow(), "updated_at": utcnow(), "metrics": metrics_summary(report),
        "artifact": True,
    }, if_state=("running",), if_attempt=attempt)
    if done is None:
        # Cancelled (or superseded) while publishing: a cancelled job keeps no artifact.
        latest = store.get(record["id"])
        if latest is None or latest["state"] == "cancelled":
            artifacts.remove(artifacts.artifact_dir(settings, record["id"]))
        return "superseded"
    store.add_method_seconds(record["methods"], seconds)
    return "succeeded"


def metrics_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Scalar before/after metrics and overall sparsity: what a job list shows."""
    def scalars(section: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in section.items() if isinstance(v, int | float) or v is None}

    metrics = report.get("metrics", {})
    sparsity = report.get("sparsity", {})
    return {
        "before": scalars(metrics.get("before", {})),
        "after": scalars(metrics.get("after", {})),
        "sparsity": sparsity.get("total"),
        "model_sparsity": sparsity.get("model"),
        "seconds_total": report.get("seconds_total"),
    }


def record_lost_worker(job_id: str, will_retry: bool, reason: str) -> None:
    """Bring the record in line after RQ saw the job's process die (retry or final failure)."""
    settings = get_settings()
    store = _store(settings)
    if will_retry:
        store.update(job_id, {"state": "queued", "message": f"{reason}; retrying",
                              "updated_at": utcnow()}, if_state=ACTIVE)
    else:
        store.update(job_id, {"state": "failed", "error": reason, "message": "failed",
                              "finished_at": utcnow(), "updated_at": utcnow()}, if_state=ACTIVE)


def on_rq_failure(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ failure callback; reached when a sweep finds the job abandoned by a dead worker.

    It runs before RQ decides on a retry, so `retries_left` still counts this one.
    """
    will_retry = bool(job.retries_left and job.retries_left > 0)
    record_lost_worker(job.id, will_retry, f"worker lost ({getattr(exc_type, '__name__', exc)})")

