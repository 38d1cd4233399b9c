"""The RQ forking worker with the service's liveness rules.

Changes to stock RQ: the heartbeat TTL of a running job is `monitoring interval + grace`
(RQ's fixed 60 s would delay recovery from a dead worker by a minute or more); a work horse
that died is reflected in the job record at once, as "queued, retrying" or "failed"; a job
cancelled while running ends in RQ's canceled registry, not its failed one (so `rq info` and
RQ's dashboards agree with the service); and a Redis outage while a job runs is ridden out
(the heartbeat skips a beat instead of ending the worker; `python -m worker` restarts the
loop once Redis is back).
"""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import InvalidJobOperation, NoSuchJobError, StopRequested
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import import_attribute
from rq.worker import Worker

from compressors.memory import Limits, ram_limit_bytes
from jobs import admission
from jobs.connection import redis_client
from jobs.queue import ON_FAILURE, TASK, get_queue
from jobs.records import JobState
from jobs.settings import Settings
from worker import tasks


class CompressionWorker(Worker):
    """One job at a time, each in a fresh forked process (GPU memory returns when it ends).

    With each heartbeat it advertises what a job may use here (`jobs.admission`), so the API
    refuses at submission a job no worker could hold.
    """

    heartbeat_grace: int = 30
    settings: Settings | None = None
    limits: Limits | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        super().heartbeat(timeout, pipeline)
        if self.settings is not None and self.limits is not None:
            admission.advertise(pipeline if pipeline is not None else self.connection,
                                self.settings, self.name, self.limits)

    def register_death(self) -> None:
        if self.settings is not None:
            admission.withdraw(self.connection, self.settings, self.name)
        super().register_death()

    stop_asked: bool = False  # a stop signal arrived (RQ's own flag misses an idle stop)

    def request_stop(self, signum: int, frame: Any) -> None:
        """RQ's warm stop, which asks Redis whether a job runs; with Redis away the answer is
        taken from the process table (a work horse alive means busy)."""
        self.stop_asked = True
        try:
            super().request_stop(signum, frame)
        except RedisError:
            if not self.horse_pid:
                raise StopRequested() from None

    def maintain_heartbeats(self, job: Job, execution: Any) -> None:
        """RQ's beat while a job runs; with Redis away the job goes on and the beat resumes
        when Redis is back (RQ would end the whole worker on the first refused beat)."""
        try:
            super().maintain_heartbeats(job, execution)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self.log.warning("Worker %s: Redis unavailable (%s); job %s goes on", self.name,
                             exc, job.id)

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
            tasks.discard_leftovers(job.id)  # stopped by a cancel: the API recorded it
            if tasks.recorded_state(job.id) == JobState.cancelled:
                with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                    job.get_status(refresh=True)
                    job.cancel()  # RQ's view: canceled, as the service says
            return
        status = job.get_status(refresh=True)
        tasks.record_lost_worker(job.id, status != JobStatus.FAILED, "job process died")
        if status == JobStatus.FAILED:
            tasks.discard_leftovers(job.id)


def check_task_names() -> None:
    """Fail at start-up, not per job, if the queue's task names miss this worker's functions."""
    for name, function in ((TASK, tasks.run_job), (ON_FAILURE, tasks.on_rq_failure)):
        if import_attribute(name) is not function:
            raise RuntimeError(f"jobs.queue names {name!r}, which is not {function.__name__}")


def build_worker(settings: Settings, name: str | None = None) -> CompressionWorker:
    """A worker on the configured queue with the configured liveness settings."""
    check_task_names()
    redis = redis_client(settings.redis_url)
    worker = CompressionWorker(
        [get_queue(redis, settings)], connection=redis, name=name, serializer=JSONSerializer,
        worker_ttl=settings.worker_ttl, job_monitoring_interval=settings.job_monitoring_interval,
        maintenance_interval=settings.maintenance_interval,
    )
    worker.heartbeat_grace = settings.heartbeat_grace
    worker.settings = settings
    worker.limits = advertised_limits(settings)
    return worker


def advertised_limits(settings: Settings) -> Limits:
    """RAM as the job process will see it; the device type from DEVICE (the parent never
    initialises CUDA, so the free GPU memory is left to the job's own check)."""
    device = (settings.device or "cpu").split(":")[0]
    return Limits(ram_limit_bytes(), None, device)
