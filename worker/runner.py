"""The RQ forking worker with the service's liveness rules.

Two changes to stock RQ: the heartbeat TTL of a running job is `monitoring interval + grace`
(RQ's fixed 60 s would delay recovery from a dead worker by a minute or more), and a work horse
that died is reflected in the job record at once, as "queued, retrying" or "failed".
"""

from __future__ import annotations

from typing import Any

from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.worker import Worker

from service.connection import redis_client
from service.queue import get_queue
from service.settings import Settings


class CompressionWorker(Worker):
    """One job at a time, each in a fresh forked process (GPU memory returns when it ends)."""

    heartbeat_grace: int = 30

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(min(job.timeout - working_time, interval))
        return max(1, interval) + self.heartbeat_grace

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None,
                           exc_string: str = "", execution: Any = None) -> None:
        super().handle_job_failure(job, queue, started_job_registry=started_job_registry,
                                   exc_string=exc_string, execution=execution)
        if "Work-horse terminated unexpectedly" not in exc_string:
            return  # stopped by a cancel: the API already recorded it
        from worker.tasks import record_lost_worker

        status = job.get_status(refresh=True)
        record_lost_worker(job.id, status != JobStatus.FAILED, "job process died")


def build_worker(settings: Settings, name: str | None = None) -> CompressionWorker:
    """A worker on the configured queue with the configured liveness settings."""
    redis = redis_client(settings.redis_url)
    worker = CompressionWorker(
        [get_queue(redis, settings)], connection=redis, name=name, serializer=JSONSerializer,
        worker_ttl=settings.worker_ttl, job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
    )
    worker.heartbeat_grace = settings.heartbeat_grace
    return worker
