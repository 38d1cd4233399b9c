"""The submission checks that touch files, run in child processes with a deadline.

Checking a submission reads the disk and parses what a user uploaded: the text policy stats
files, admission reads config.json, a model's index and its safetensors headers (megabytes of
JSON for a model of many experts) and matches the recipe's layer patterns against every
tensor name (`jobs.submission`). Inside an `async` route one such read stalls every request
the process serves: an index naming a pipe of the API process once blocked `/healthz` until
the process was killed. A thread is not enough either: parsing a large header holds the GIL
for its whole length, and the event loop waits for it.

So the checks run in child processes (started by a fork server, so they inherit nothing of the
API's sockets or threads), one check at a time each. Each child is driven by one thread of a
small pool; the thread only waits on the child's pipe, which releases the GIL. A check past its
deadline gets a 503 and its child is killed and replaced, so a stuck read costs one child,
never the API. The checks themselves refuse non-regular files before opening them and bound
what they read (`compressors.io.model_files`); the deadline is the last line of defence.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from fastapi import HTTPException, status

RETRY_AFTER_S = 5
PRELOAD = ["jobs.submission"]  # imported once in the fork server, so children start warm
T = TypeVar("T")


def _serve(connection: Connection) -> None:
    """A child's loop: run each (function, args) it is sent, answer (ok, value)."""
    while True:
        try:
            check, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[bool, Any] = (True, check(*args))
        except Exception as exc:  # a bug in a check: the parent logs it as a 500
            answer = (False, f"{type(exc).__name__}: {exc}")
        connection.send(answer)


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, context: Any) -> None:
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end,), daemon=True,
                                       name="submission-check")
        self.process.start()
        child_end.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.connection.close()


class CheckFailed(RuntimeError):
    """A check raised, or its child died: a bug or a crash, not the user's input."""


class SubmissionChecks:
    """`processes` children, each serving one check at a time, each check with a deadline."""

    def __init__(self, processes: int, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self._threads = ThreadPoolExecutor(processes, thread_name_prefix="submission-check")
        self._local = threading.local()
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)

    async def warm(self) -> None:
        """Start the fork server now (it imports the checks once, a second or two), so the
        first submission does not pay for it inside its deadline."""
        from multiprocessing import forkserver

        await asyncio.to_thread(forkserver.ensure_running)

    async def run(self, check: Callable[..., T], *args: Any) -> T:
        """`check(*args)` in a child; `check` must be a module-level function and its
        arguments and answer picklable. Past the deadline: a 503 with Retry-After."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._threads, self._in_child, check, args)
        except TimeoutError:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"the submission checks took longer than {self.deadline_s:g} s (the limit, "
                "SUBMISSION_CHECK_SECONDS); retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def _in_child(self, check: Callable[..., T], args: tuple[Any, ...]) -> T:
        child: _Child | None = getattr(self._local, "child", None)
        if child is None or not child.process.is_alive():
            child = self._local.child = _Child(self._context)
        try:
            child.connection.send((check, args))
            if not child.connection.poll(self.deadline_s):
                raise TimeoutError
            ok, value = child.connection.recv()
        except (TimeoutError, EOFError, OSError) as exc:
            child.kill()
            self._local.child = None
            if isinstance(exc, TimeoutError):
                raise
            raise CheckFailed("a submission check's process died") from None
        if not ok:
            raise CheckFailed(value)
        return value
