"""The functions RQ runs: `run_job` in the work horse, `on_rq_failure` after a lost worker.

Their dotted names are `jobs.queue.TASK` and `jobs.queue.ON_FAILURE`; moving or renaming one
means changing that constant (the worker refuses to start until both resolve here).

`run_job` records its own failures (bad model, timeout, out of memory) as the job's `failed`
state, with an `error_kind` read from the exception's type (`worker.failures`), then fails in
RQ too (`JobFailed`, with the RQ job's retries spent first), so `rq info` and RQ's dashboards
count it failed, and RQ's bounded Retry is left to mean one thing only, "the process running
this job died" (`worker_lost` once the retries are spent). A Redis outage while a job runs does
not lose its end: the final write waits for Redis to come back. torch and the library's
runners (`compressors.run`) are imported inside the job, never at module level (only its
torch-free report schema is), so the RQ parent process that imports this module never
initialises CUDA.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from compressors.report.schema import CompressionReport
from jobs import artifacts
from jobs.connection import redis_client
from jobs.policy import model_source_allowed, recipe_violations, text_roots
from jobs.records import ACTIVE, ErrorKind, JobMetrics, JobRecord, JobState, JobUpdate, utcnow
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from worker.failures import classify
from worker.progress import ProgressWriter

RUNNING = (JobState.running,)
REDIS_WAIT_S = 600.0  # how long a finished job waits for Redis to record its end


class JobFailed(Exception):
    """Raised after a failure is recorded, so RQ marks its job failed (never retried)."""


def _store(settings: Settings) -> JobStore:
    return JobStore(redis_client(settings.redis_url), settings.key_prefix)


def run_job(job_id: str) -> str:
    """Run one attempt of a job and leave its record in a final state (or to its successor)."""
    settings = get_settings()
    store = _store(settings)
    record = store.get(job_id)
    if record is None or record.state not in ACTIVE:
        return "skipped"
    attempt = record.attempt + 1
    started = store.update(job_id, JobUpdate(
        state=JobState.running, attempt=attempt, stage="loading", progress=0.0,
        message=f"attempt {attempt} started", started_at=utcnow(), finished_at=None,
        worker=os.environ.get("RQ_WORKER_ID"), error=None, error_kind=None,
    ), if_state=ACTIVE)
    if started is None:
        return "skipped"
    began = time.monotonic()
    with ProgressWriter(store, job_id, attempt, settings.progress_interval) as progress:
        try:
            report = _compress_or_reuse(settings, record, progress)
            metrics = JobMetrics.from_report(report)
        except Exception as exc:  # recorded for the user; RQ must not retry a bad job
            said, kind = describe_failure(exc), classify(exc)
            _when_redis_is_back(_finish_failed, store, job_id, attempt, said, kind)
            _no_retry_in_rq()
            raise JobFailed(said) from None
    return _when_redis_is_back(_finish_succeeded, store, settings, record, attempt, metrics,
                               time.monotonic() - began, report.recipe)


def _when_redis_is_back(write: Any, *args: Any) -> Any:
    """Run a final write, retrying with backoff while Redis is unreachable (restarting)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    deadline, pause = time.monotonic() + REDIS_WAIT_S, 0.5
    while True:
        try:
            return write(*args)
        except (RedisConnectionError, RedisTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


def _no_retry_in_rq() -> None:
    """RQ retries a failed job while it has retries left; a recorded failure is final."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.retries_left = 0


def _compress_or_reuse(settings: Settings, record: JobRecord,
                       progress: ProgressWriter) -> CompressionReport:
    """The report of the published artifact: reused if a previous attempt completed it.

    One path for a recipe job and a goal job: the record's spec (`JobRecord.spec`) goes
    through the service's policy and then to the library's one door (`compressors.run`),
    which runs the recipe or searches for one. The library checks the texts against the same
    roots as the API did before it reads anything (the policy may have changed since
    submission); a refusal fails the job. A goal out of reach fails it too, with the closest
    candidate's numbers in the error.
    """
    destination = artifacts.artifact_dir(settings, record.id)
    if destination.exists() and artifacts.verify_manifest(destination):
        return CompressionReport.model_validate_json(
            (destination / artifacts.REPORT_FILE).read_bytes())
    if destination.exists():
        artifacts.remove(destination)  # unverifiable: never serve half of one
    import torch

    from compressors import run

    spec = record.spec()
    violations = recipe_violations(settings, spec)
    if violations:
        loc, message = violations[0]
        raise PermissionError(f"{'.'.join(map(str, loc))}: {message}")
    if not model_source_allowed(settings, record.owner, record.model_path or record.model):
        raise PermissionError("model: not a bundled model, one of the owner's uploads, or a "
                              "model under an allowed server folder")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    return run(record.model_path or record.model, spec, destination, progress=progress,
               device=settings.device, model_name=record.model,
               allowed_text_roots=text_roots(settings))


_PATH = re.compile(r"(?<![\w.:/-])(?:~|\.{1,2})?(?:/[\w.@+=,-]+)+/?")
_CODE_IN_PICKLE = ("Weights only load failed", "weights_only", "Unsupported global",
                   "UnpicklingError")


def describe_failure(exc: BaseException) -> str:
    """What the job record says of a failure: the exception's type and message, with every
    server path cut to its last part (a user never learns the server's layout), and a pickle
    that torch refused said for what it is; never advice to load it unsafely."""
    text = f"{type(exc).__name__}: {exc}"
    if any(marker in text for marker in _CODE_IN_PICKLE):
        return ("RefusedWeights: a .bin weight file was refused because it contains code "
                "(pickled objects other than tensors), which this service never runs; "
                "publish the weights as .safetensors")
    return _PATH.sub(_last_part, text)[:4000]


def _last_part(match: re.Match[str]) -> str:
    name = match.group(0).rstrip("/").rsplit("/", 1)[-1]
    return f"…/{name}" if name else "…"


def _finish_failed(store: JobStore, job_id: str, attempt: int, said: str,
                   kind: ErrorKind) -> None:
    store.update(job_id, JobUpdate(state=JobState.failed, error=said, error_kind=kind,
                                   message="failed", finished_at=utcnow()),
                 if_state=RUNNING, if_attempt=attempt)


def _finish_succeeded(store: JobStore, settings: Settings, record: JobRecord, attempt: int,
                      metrics: JobMetrics, seconds: float, ran: dict[str, Any]) -> str:
    """Record the success with the recipe that ran, as the report says (for a goal job, the
    one its search chose; for a recipe job, the submitted one, defaults filled in)."""
    change = JobUpdate(state=JobState.succeeded, stage="saving", progress=1.0, message="done",
                       finished_at=utcnow(), metrics=metrics, artifact=True, recipe=ran)
    done = store.update(record.id, change, if_state=RUNNING, if_attempt=attempt)
    if done is None:
        # Cancelled (or superseded) while publishing: a cancelled job keeps no artifact.
        latest = store.get(record.id)
        if latest is None or latest.state == JobState.cancelled:
            artifacts.remove(artifacts.artifact_dir(settings, record.id))
        return "superseded"
    store.add_method_seconds(record.methods, seconds)
    return "succeeded"


def recorded_state(job_id: str) -> JobState | None:
    """The state the service's record holds (the RQ parent asks after a stopped job)."""
    record = _store(get_settings()).get(job_id)
    return record.state if record is not None else None


def discard_leftovers(job_id: str) -> None:
    """The job's process is gone for good: no half-written staging folder may remain."""
    artifacts.discard_leftovers(get_settings(), job_id)


def record_lost_worker(job_id: str, will_retry: bool, reason: str) -> None:
    """Bring the record in line after RQ saw the job's process die (retry or final failure)."""
    store = _store(get_settings())
    if will_retry:  # waiting to run again: nothing of the lost attempt's progress stands
        change = JobUpdate(state=JobState.queued, stage=None, progress=0.0,
                           message=f"{reason}; retrying")
    else:
        change = JobUpdate(state=JobState.failed, error=reason,
                           error_kind=ErrorKind.worker_lost, message="failed",
                           finished_at=utcnow())
    store.update(job_id, change, if_state=ACTIVE)


def on_rq_failure(job: Any, connection: Any, exc_type: Any, exc: Any, tb: Any) -> None:
    """RQ failure callback; reached when a sweep finds the job abandoned by a dead worker,
    and after `run_job` raised `JobFailed` (its record is final then, so nothing changes).

    It runs before RQ decides on a retry, so `retries_left` still counts this one.
    """
    will_retry = bool(job.retries_left and job.retries_left > 0)
    record_lost_worker(job.id, will_retry, f"worker lost ({getattr(exc_type, '__name__', exc)})")
