"""`python -m worker`: start one RQ worker for the compression queue.

The GPU is chosen the usual way, with CUDA_VISIBLE_DEVICES; without one, jobs run on the CPU.
Settings (REDIS_URL, DATA_DIR, timeouts) come from the environment, see README.md "The job service".
"""

from __future__ import annotations

import argparse
import logging
import sys

from service.settings import get_settings
from worker.runner import build_worker


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
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
    worker = build_worker(settings, args.name)
    worker.work(burst=args.burst, logging_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
