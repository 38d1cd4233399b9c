"""What one key may hold at once: open event streams, uploads in progress, active jobs, and
what its uploads store.

Without bounds one key can starve everyone (hundreds of open streams, uploads that fill the
disk, a queue of thousands). Beyond a bound the answer is 429 with `Retry-After`. Streams and
uploads are counted per API process (what it holds open); active jobs (queued or running) are
counted in Redis, for the whole service (`jobs.store`'s per-owner active set). Stored uploads
(models and bytes per key) are counted in Redis too (`jobs.upload_ledger`); their 429 has no
`Retry-After`, because waiting frees nothing: only deleting an upload does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from fastapi import HTTPException, status

from jobs.upload_ledger import QuotaExceeded

RETRY_AFTER_S = 5


def too_many(what: str, limit: int, setting: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"this key already holds {limit} {what} (the limit, {setting}); close some, or retry "
        "later", headers={"Retry-After": str(RETRY_AFTER_S)})


def stores_too_much(exc: QuotaExceeded) -> HTTPException:
    """429 for a key whose uploads are at MAX_MODELS_PER_KEY or MAX_UPLOAD_BYTES_PER_KEY (the
    message names the limit and its setting)."""
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc))


class Leases:
    """Per-key counts of something held open in this process, each under one limit."""

    def __init__(self, what: str, limit: int, setting: str) -> None:
        self.what, self.limit, self.setting = what, limit, setting
        self.held: Counter[str] = Counter()

    def take(self, key: str) -> Callable[[], None]:
        """One lease for `key`, or 429; returns the function that gives it back (once)."""
        if self.held[key] >= self.limit:
            raise too_many(self.what, self.limit, self.setting)
        self.held[key] += 1
        returned = False

        def give_back() -> None:
            nonlocal returned
            if not returned:
                returned = True
                self.held[key] -= 1
                if self.held[key] <= 0:
                    del self.held[key]

        return give_back
