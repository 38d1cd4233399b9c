"""`python -m worker`: start one RQ worker for the compression queue.

The GPU is chosen the usual way, with CUDA_VISIBLE_DEVICES; without one, jobs run on the CPU.
Settings (REDIS_URL, DATA_DIR, timeouts) come from the environment: docs/service.md, "Settings".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from redis import Redis
from redis.exceptions import RedisError

from jobs.settings import get_settings
from worker.runner import CompressionWorker, build_worker

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description="Run one compression worker (one job at a time, each in a fresh process).",
    )
    parser.add_argument("--burst", action="store_true", help="quit once the queue is empty")
    parser.add_argument("--name", default=None, help="worker name (default: random)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the worker loop; when Redis goes away under it (RQ then ends the loop), wait for
    Redis with backoff and start the loop again under the same name, until asked to stop."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    while True:
        worker = build_worker(settings, args.name)
        try:
            worker.work(burst=args.burst, logging_level=args.log_level)
        except RedisError as exc:  # raised by RQ's teardown when Redis is gone
            log.warning("worker loop ended: Redis unavailable (%s)", exc)
        if worker.stop_asked or (args.burst and _reachable(worker.connection)):
            return 0
        if not _wait_for_redis(worker):
            return 0
        with contextlib.suppress(RedisError):
            worker.register_death()  # the old registration, restored by Redis's append log
        log.info("Redis is back; restarting the worker loop")


def _reachable(connection: Redis) -> bool:
    try:
        return bool(connection.ping())
    except RedisError:
        return False


def _wait_for_redis(worker: CompressionWorker) -> bool:
    """Ping with backoff (1 s doubling to 30 s); False if a stop was requested meanwhile."""
    pause = 1.0
    while not _reachable(worker.connection):
        if worker.stop_asked:
            return False
        log.warning("waiting %.0f s for Redis", pause)
        time.sleep(pause)
        pause = min(pause * 2, 30.0)
    return not worker.stop_asked


if __name__ == "__main__":
    sys.exit(main())
