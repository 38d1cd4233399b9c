"""The job record store: the source of truth users see, one Redis hash per job.

Every field is stored JSON-encoded so types survive the round trip. Writers that may race (the
API cancelling, a job reporting progress, a retried attempt, an orphaned process) go through one
Lua script that applies an update only if the record is still in an expected state and attempt:
a cancelled job stays cancelled and a superseded attempt cannot overwrite its successor.
Every change is published on one pub/sub channel, which feeds the SSE streams.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis import Redis

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
# What clients see, in this order (`model_path`, the resolved server path, stays internal).
FIELDS = ("id", "name", "owner", "model", "recipe", "methods", "state", "stage", "progress",
          "message", "created_at", "started_at", "finished_at", "updated_at", "attempt",
          "max_attempts", "error", "metrics", "artifact", "worker")

_CONDITIONAL_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then
  local state = redis.call('HGET', KEYS[1], 'state')
  local ok = false
  for s in string.gmatch(ARGV[1], '[^,]+') do
    if state == cjson.encode(s) then ok = true end
  end
  if not ok then return 0 end
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""


def utcnow() -> str:
    """ISO 8601 UTC with a `Z`, millisecond precision: sortable and unambiguous."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Keys:
    """Redis key names under one prefix, so tests and deployments can share a server."""

    prefix: str

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def all_jobs(self) -> str:
        return f"{self.prefix}:jobs"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:jobs:owner:{owner}"

    def events(self) -> str:
        return f"{self.prefix}:events"

    def method_seconds(self) -> str:
        return f"{self.prefix}:metrics:method_seconds"


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        flat += [key, json.dumps(value)]
    return flat


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}


class JobStore:
    """CRUD and guarded transitions of job records."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._update = redis.register_script(_CONDITIONAL_UPDATE)

    def create(self, record: dict[str, Any], pipeline: Any = None) -> None:
        """Write a new record and index it; pass a pipeline to bundle it with the enqueue."""
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        score = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00")).timestamp()
        pipe.hset(self.keys.job(record["id"]),
                  mapping={key: json.dumps(value) for key, value in record.items()})
        pipe.zadd(self.keys.all_jobs(), {record["id"]: score})
        pipe.zadd(self.keys.owner_jobs(record["owner"]), {record["id"]: score})
        pipe.publish(self.keys.events(), json.dumps(record))
        if pipeline is None:
            pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self.keys.job(job_id))
        return _decode(raw) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def update(
        self,
        job_id: str,
        fields: dict[str, Any],
        if_state: Iterable[str] | None = None,
        if_attempt: int | None = None,
    ) -> dict[str, Any] | None:
        """Apply `fields` if the guards hold; returns the new record, or None if refused."""
        guard_states = ",".join(if_state) if if_state is not None else ""
        guard_attempt = json.dumps(if_attempt) if if_attempt is not None else ""
        applied = self._update(keys=[self.keys.job(job_id)],
                               args=[guard_states, guard_attempt, *_encode(fields)])
        if not applied:
            return None
        record = self.get(job_id)
        if record is not None:
            self.redis.publish(self.keys.events(), json.dumps(record))
        return record

    def list_ids(self, owner: str | None) -> list[str]:
        """Newest first; `owner=None` lists every job (admin)."""
        key = self.keys.all_jobs() if owner is None else self.keys.owner_jobs(owner)
        return [i.decode() for i in self.redis.zrevrange(key, 0, -1)]

    def list(
        self, owner: str | None, state: str | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of records, newest first, optionally of one state; also the total count."""
        ids = self.list_ids(owner)
        if state is None:
            return self.get_many(ids[offset : offset + limit]), len(ids)
        matching = [r for r in self.get_many(ids) if r.get("state") == state]
        return matching[offset : offset + limit], len(matching)

    def delete(self, record: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.job(record["id"]))
        pipe.zrem(self.keys.all_jobs(), record["id"])
        pipe.zrem(self.keys.owner_jobs(record["owner"]), record["id"])
        pipe.publish(self.keys.events(), json.dumps({**record, "deleted": True}))
        pipe.execute()

    def count_by_state(self) -> dict[str, int]:
        """For /metrics: reads every record's state field (one pipelined round trip)."""
        ids = self.list_ids(None)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(job_id), "state")
        counts = dict.fromkeys(STATES, 0)
        for raw in pipe.execute():
            if raw is not None:
                state = json.loads(raw)
                counts[state] = counts.get(state, 0) + 1
        return counts

    def add_method_seconds(self, methods: list[str], seconds: float) -> None:
        """Accumulate job wall time per method for the Prometheus summary."""
        pipe = self.redis.pipeline()
        for method in set(methods):
            pipe.hincrbyfloat(self.keys.method_seconds(), f"{method}:sum", seconds)
            pipe.hincrby(self.keys.method_seconds(), f"{method}:count", 1)
        pipe.execute()

    def method_seconds(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for field, value in self.redis.hgetall(self.keys.method_seconds()).items():
            method, kind = field.decode().rsplit(":", 1)
            out.setdefault(method, {})[kind] = float(value)
        return out


def new_record(
    job_id: str, owner: str, name: str, model: str, recipe: dict[str, Any], max_attempts: int
) -> dict[str, Any]:
    """The record of a job just submitted."""
    return {
        "id": job_id, "name": name, "owner": owner, "model": model, "recipe": recipe,
        "methods": [step["method"] for step in recipe.get("steps", [])],
        "state": "queued", "stage": None, "progress": 0.0, "message": "queued",
        "created_at": utcnow(), "started_at": None, "finished_at": None, "updated_at": utcnow(),
        "attempt": 0, "max_attempts": max_attempts, "error": None, "metrics": None,
        "artifact": False, "worker": None,
    }
