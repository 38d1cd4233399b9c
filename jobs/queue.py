"""The RQ side: enqueue a job, cancel it, and read queue and worker state.

RQ is plumbing: the job record (jobs.store) is what users see. RQ jobs carry only the job id
(JSON serializer, never pickle), use the service's job timeout, and get a bounded `Retry` that
RQ applies only when the process running the job died (the job function itself never raises:
it records its own failures), so a crash is retried and a bad recipe is not.

The functions RQ runs are named by the two constants below, and nowhere else. RQ stores a job's
function as a dotted name that the worker process imports, so the name is the whole interface:
the jobs core (and the API through it) never imports the worker, and the worker implements
the names. `python -m worker` refuses to start when they do not resolve to its functions, and
tests/service/test_worker.py checks the same.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import Worker

from jobs.settings import Settings

TASK = "worker.tasks.run_job"  # run one attempt of a job: `run_job(job_id) -> str`
ON_FAILURE = "worker.tasks.on_rq_failure"  # RQ failure callback (a dead worker was found)


class WorkerInfo(BaseModel):
    """A worker registered on the queue, as the workers page and /readyz see it."""

    name: str
    state: str = Field(description="RQ's worker state: idle, busy, suspended, ...")
    current_job: str | None = Field(None, description="id of the job it is running")
    heartbeat_age_s: float | None = Field(None, description="seconds since its last heartbeat")
    hostname: str | None = None
    pid: int | None = None


def get_queue(redis: Redis, settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=redis, serializer=JSONSerializer,
                 default_timeout=settings.job_timeout)


def enqueue(queue: Queue, job_id: str, settings: Settings, pipeline: Any) -> Job:
    """Add the RQ job to `pipeline` (executed by the caller together with the record)."""
    from rq.callbacks import Callback

    retry = Retry(max=settings.job_retries) if settings.job_retries > 0 else None
    return queue.enqueue_call(
        TASK, args=(job_id,), job_id=job_id, timeout=settings.job_timeout,
        result_ttl=settings.result_ttl, failure_ttl=settings.result_ttl, retry=retry,
        on_failure=Callback(ON_FAILURE), description=f"compress {job_id}", pipeline=pipeline,
    )


def cancel(redis: Redis, job_id: str) -> None:
    """Remove the job from the queue if waiting, and kill its process if running."""
    try:
        job = Job.fetch(job_id, connection=redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return
    # Not executing: cancelling it below keeps it from ever starting.
    with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
        send_stop_job_command(redis, job_id, serializer=JSONSerializer)
    # Already cancelled or finished; or (ValueError) RQ lists an execution of the job whose
    # hash its worker just removed: the job is ending on its own, nothing left to cancel.
    with contextlib.suppress(InvalidJobOperation, NoSuchJobError, ValueError):
        job.cancel()


def delete_rq_job(redis: Redis, job_id: str) -> None:
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()


def workers(queue: Queue) -> list[WorkerInfo]:
    """Workers registered on the queue with heartbeat age and current job."""
    now = datetime.now(UTC)
    out = []
    for worker in Worker.all(queue=queue):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        out.append(WorkerInfo(
            name=worker.name, state=worker.get_state(),  # a str enum: stored as its value
            current_job=worker.get_current_job_id(),
            heartbeat_age_s=round((now - beat).total_seconds(), 3) if beat else None,
            hostname=worker.hostname, pid=worker.pid,
        ))
    return sorted(out, key=lambda w: w.name)


def fresh_workers(queue: Queue, max_age: float) -> int:
    return sum(1 for w in workers(queue)
               if w.heartbeat_age_s is not None and w.heartbeat_age_s <= max_age)
