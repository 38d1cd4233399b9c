"""The RQ side: enqueue a job, cancel it, and read queue and worker state.

RQ is plumbing: the job record (service.jobs) is what users see. RQ jobs carry only the job id
(JSON serializer, never pickle), use the service's job timeout, and get a bounded `Retry` that
RQ applies only when the process running the job died (the job function itself never raises:
it records its own failures), so a crash is retried and a bad recipe is not.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import Worker

from service.settings import Settings

TASK = "worker.tasks.run_job"
ON_FAILURE = "worker.tasks.on_rq_failure"


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
    with contextlib.suppress(InvalidJobOperation):  # already cancelled or finished
        job.cancel()


def delete_rq_job(redis: Redis, job_id: str) -> None:
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()


def workers(redis: Redis, queue: Queue) -> list[dict[str, Any]]:
    """Workers registered on the queue with heartbeat age and current job."""
    now = datetime.now(UTC)
    out = []
    for worker in Worker.all(queue=queue):
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        out.append({
            "name": worker.name,
            "state": worker.get_state(),
            "current_job": worker.get_current_job_id(),
            "heartbeat_age_s": round((now - beat).total_seconds(), 3) if beat else None,
            "hostname": worker.hostname,
            "pid": worker.pid,
        })
    return sorted(out, key=lambda w: w["name"])


def fresh_workers(redis: Redis, queue: Queue, max_age: float) -> int:
    return sum(1 for w in workers(redis, queue)
               if w["heartbeat_age_s"] is not None and w["heartbeat_age_s"] <= max_age)
