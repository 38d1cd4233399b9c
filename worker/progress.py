"""Writes a running job's progress into its record, throttled, with a liveness heartbeat.

The library calls back on every step; the record is rewritten when the stage changes or at most
every half second, and a background thread rewrites it every PROGRESS_INTERVAL seconds even when
the library is quiet, so watchers always see a recent `updated_at`. A write the store refuses
means the job was cancelled or superseded by a newer attempt; an orphaned process (its worker
parent died) also stops itself, so a retried job never runs twice at once.
"""

from __future__ import annotations

import os
import threading
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from compressors.progress import ProgressEvent
from jobs.records import JobState, JobUpdate
from jobs.store import JobStore

_MIN_WRITE_GAP = 0.5


class ProgressWriter:
    """Callable progress sink for `compressors.compress` bound to one attempt of one job."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, interval: float) -> None:
        self.store, self.job_id, self.attempt, self.interval = store, job_id, attempt, interval
        self.state = JobUpdate(stage="loading", progress=0.0, message="starting")
        self._last_write = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._parent = os.getppid()
        self._thread = threading.Thread(target=self._beat, name="job-heartbeat", daemon=True)

    def __enter__(self) -> ProgressWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __call__(self, event: ProgressEvent) -> None:
        """The library's progress callback."""
        changed = event.stage != self.state.stage
        self.state = JobUpdate(stage=event.stage, progress=round(event.progress, 4),
                               message=event.message or self.state.message)
        if changed or time.monotonic() - self._last_write >= _MIN_WRITE_GAP:
            self.write()

    def write(self) -> bool:
        """False only when the store refused the write (cancelled or superseded); with Redis
        away the job goes on, and the next beat writes again."""
        with self._lock:
            self._last_write = time.monotonic()
            try:
                done = self.store.update(self.job_id, self.state, if_state=(JobState.running,),
                                         if_attempt=self.attempt)
            except (RedisConnectionError, RedisTimeoutError):
                return True
        return done is not None

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != self._parent:
                os._exit(1)  # orphaned: the worker died; a retry will run this job
            if not self.write() and not self._stop.is_set():
                os._exit(1)  # cancelled or superseded: stop using the machine now
