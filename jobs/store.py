"""The job record store: the source of truth users see, one Redis hash per job.

Every field is stored JSON-encoded so types survive the round trip, and read back as a
`JobRecord`. Writers that may race (the API cancelling, a job reporting progress, a retried
attempt, an orphaned process) go through one Lua script that applies an update only if the
record is still in an expected state and attempt: a cancelled job stays cancelled and a
superseded attempt cannot overwrite its successor. Every change is published on one pub/sub
channel, which feeds the SSE streams; `parse_event` reads what `publish` wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from jobs.records import FINISHED, JobRecord, JobState, JobUpdate

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
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
-- The history: one entry per change of state, stage or message, the last ARGV[3] kept.
local function field(name)
  local raw = redis.call('HGET', KEYS[1], name)
  if not raw then return cjson.null end
  return cjson.decode(raw)
end
local entry = {at = field('updated_at'), state = field('state'), stage = field('stage'),
               message = field('message'), attempt = field('attempt')}
local raw = redis.call('HGET', KEYS[1], 'history')
local history = {}
if raw and raw ~= '[]' and raw ~= 'null' then history = cjson.decode(raw) end
local last = history[#history]
if last == nil or last.state ~= entry.state or last.stage ~= entry.stage
    or last.message ~= entry.message then
  table.insert(history, entry)
  while #history > tonumber(ARGV[3]) do table.remove(history, 1) end
  redis.call('HSET', KEYS[1], 'history', cjson.encode(history))
end
return 1
"""
MAX_HISTORY = 60  # entries a record keeps (the dashboard draws its timeline from them)
_DELETED = "deleted"  # the flag a deletion's event carries beside the record's fields


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

    def owner_active(self, owner: str) -> str:
        """The owner's queued and running jobs (the per-key bound counts these)."""
        return f"{self.prefix}:jobs:active:{owner}"

    def events(self) -> str:
        return f"{self.prefix}:events"

    def method_seconds(self) -> str:
        return f"{self.prefix}:metrics:method_seconds"


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        flat += [key, json.dumps(value)]
    return flat


def _decode(raw: dict[bytes, bytes]) -> JobRecord:
    return JobRecord.model_validate({k.decode(): json.loads(v) for k, v in raw.items()})


def _event(record: JobRecord, deleted: bool = False) -> str:
    data = record.model_dump(mode="json")
    return json.dumps({**data, _DELETED: True} if deleted else data)


def parse_event(data: bytes | str) -> tuple[JobRecord, bool]:
    """A pub/sub message of the store: the record, and whether it was deleted."""
    payload = json.loads(data)
    return JobRecord.model_validate(payload), bool(payload.get(_DELETED))


class JobStore:
    """CRUD and guarded transitions of job records."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.keys = Keys(prefix)
        self._update = redis.register_script(_CONDITIONAL_UPDATE)

    def create(self, record: JobRecord, pipeline: Any = None) -> None:
        """Write a new record and index it; pass a pipeline to bundle it with the enqueue."""
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        score = datetime.fromisoformat(record.created_at.replace("Z", "+00:00")).timestamp()
        data = record.model_dump(mode="json")
        pipe.hset(self.keys.job(record.id),
                  mapping={key: json.dumps(value) for key, value in data.items()})
        pipe.zadd(self.keys.all_jobs(), {record.id: score})
        pipe.zadd(self.keys.owner_jobs(record.owner), {record.id: score})
        pipe.sadd(self.keys.owner_active(record.owner), record.id)
        pipe.publish(self.keys.events(), _event(record))
        if pipeline is None:
            pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.redis.hgetall(self.keys.job(job_id))
        return _decode(raw) if raw else None

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_decode(raw) for raw in pipe.execute() if raw]

    def update(
        self,
        job_id: str,
        change: JobUpdate,
        if_state: Iterable[JobState] | None = None,
        if_attempt: int | None = None,
    ) -> JobRecord | None:
        """Apply `change` if the guards hold; returns the new record, or None if refused."""
        guard_states = ",".join(if_state) if if_state is not None else ""
        guard_attempt = json.dumps(if_attempt) if if_attempt is not None else ""
        applied = self._update(keys=[self.keys.job(job_id)],
                               args=[guard_states, guard_attempt, MAX_HISTORY,
                                     *_encode(change.fields())])
        if not applied:
            return None
        record = self.get(job_id)
        if record is not None:
            pipe = self.redis.pipeline()
            active = self.keys.owner_active(record.owner)
            if record.state in FINISHED:
                pipe.srem(active, job_id)
            else:
                pipe.sadd(active, job_id)
            pipe.publish(self.keys.events(), _event(record))
            pipe.execute()
        return record

    def list_ids(self, owner: str | None) -> list[str]:
        """Newest first; `owner=None` lists every job (admin)."""
        key = self.keys.all_jobs() if owner is None else self.keys.owner_jobs(owner)
        return [i.decode() for i in self.redis.zrevrange(key, 0, -1)]

    def list(
        self, owner: str | None, state: JobState | None = None, offset: int = 0, limit: int = 50
    ) -> tuple[list[JobRecord], int]:
        """One page of records, newest first, optionally of one state; also the total count."""
        ids = self.list_ids(owner)
        if state is None:
            return self.get_many(ids[offset : offset + limit]), len(ids)
        matching = [r for r in self.get_many(ids) if r.state == state]
        return matching[offset : offset + limit], len(matching)

    def delete(self, record: JobRecord) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(self.keys.job(record.id))
        pipe.zrem(self.keys.all_jobs(), record.id)
        pipe.zrem(self.keys.owner_jobs(record.owner), record.id)
        pipe.srem(self.keys.owner_active(record.owner), record.id)
        pipe.publish(self.keys.events(), _event(record, deleted=True))
        pipe.execute()

    def active_count(self, owner: str) -> int:
        """Queued and running jobs of `owner`, after dropping entries whose record ended or
        vanished by other means (so the count never drifts upwards)."""
        key = self.keys.owner_active(owner)
        ids = [i.decode() for i in self.redis.smembers(key)]
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(job_id), "state")
        stale = [job_id for job_id, raw in zip(ids, pipe.execute(), strict=True)
                 if raw is None or JobState(json.loads(raw)) in FINISHED]
        if stale:
            self.redis.srem(key, *stale)
        return len(ids) - len(stale)

    def count_by_state(self) -> dict[JobState, int]:
        """For /metrics: reads every record's state field (one pipelined round trip)."""
        ids = self.list_ids(None)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.keys.job(job_id), "state")
        counts = dict.fromkeys(JobState, 0)
        for raw in pipe.execute():
            if raw is not None:
                state = JobState(json.loads(raw))
                counts[state] += 1
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
