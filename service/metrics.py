"""Prometheus text exposition, written directly (a handful of gauges needs no client library)."""

from __future__ import annotations

from rq import Queue

from jobs import queue as rq_queue
from jobs.store import JobStore


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return "\n".join(lines)


def render(store: JobStore, queue: Queue) -> str:
    by_state = store.count_by_state()
    seconds = store.method_seconds()
    workers = rq_queue.workers(queue)
    blocks = [
        _metric("compressors_queue_depth", "gauge", "jobs waiting in the queue",
                [("", queue.count)]),
        _metric("compressors_jobs", "gauge", "job records by state",
                [(f'{{state="{s}"}}', n) for s, n in by_state.items()]),
        _metric("compressors_job_seconds", "summary",
                "wall time of succeeded jobs, by method in their recipe",
                [(f'_sum{{method="{m}"}}', v.get("sum", 0.0)) for m, v in seconds.items()]
                + [(f'_count{{method="{m}"}}', v.get("count", 0.0)) for m, v in seconds.items()]),
        _metric("compressors_workers", "gauge", "workers registered on the queue",
                [("", len(workers))]),
        _metric("compressors_workers_busy", "gauge", "workers running a job",
                [("", sum(1 for w in workers if w.current_job))]),
    ]
    return "\n".join(blocks) + "\n"
