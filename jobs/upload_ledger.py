"""What each key stores in uploads, recorded once instead of walked on every request.

Why: GET /models used to list the owner's upload folder and sum the size of every file of
every model (after an upload of 100,000 small files, 1.36 s per request), and nothing bounded
what one key could store. Now each upload's unpacked bytes and file count are measured once,
when it completes, and kept in one Redis hash per owner, `<KEY_PREFIX>:uploads:<owner>`
(field: the model's name, value: its `UploadSize` as JSON); deleting the upload deletes its
field. Listing and the quota check read that hash and never touch the folders.

The quota, without a race: `admit` runs after an upload is unpacked and before it is renamed
into place. One Lua script counts the hash's models and bytes and either refuses
(MAX_MODELS_PER_KEY, MAX_UPLOAD_BYTES_PER_KEY) or records the new upload, so of two concurrent
uploads of one key that only one fits, the second sees the first one's field and is refused.
An upload admitted whose rename then fails is forgotten again by its caller.

Self-heal: Redis may lose the hash (the CI machine's Redis keeps nothing on disk; a restart
empties it). A hash is trusted only while it holds the field `@complete`; without it the first
reader rebuilds it from the owner's folder (the one walk of the folders this module does), under
WATCH, so an upload or delete landing meanwhile makes it start over instead of writing a stale
view. A delete also bumps `@changes`, so the WATCH sees it even when the name had no field yet.
An operator who adds or removes upload folders by hand deletes the hash to have it rebuilt.
"""

from __future__ import annotations

from typing import Literal

from redis import Redis
from redis.exceptions import WatchError

from jobs.model_registry import uploaded_folders
from jobs.settings import Settings
from jobs.uploads import UploadSize, measure

COMPLETE = "@complete"  # the hash lists every upload of its owner (model names never start
CHANGES = "@changes"  # with "@": `model_registry.NAME`), and a counter deletes bump
REBUILD_TRIES = 5  # rebuilds raced by writes before one gives up (the hash stays untrusted)

# KEYS[1]: the owner's hash. ARGV: the complete marker, name, size as JSON, its bytes, the
# most models, the most bytes. Returns {code, models stored, bytes stored}: 0 recorded,
# 1 too many models, 2 too many bytes, -1 the hash is not complete (rebuild, then retry),
# -2 the name is taken (a concurrent upload of the same name got there first).
_ADMIT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {-1, 0, 0} end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return {-2, 0, 0} end
local models, stored = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 1) ~= '@' then
    models = models + 1
    stored = stored + cjson.decode(fields[i + 1])['bytes']
  end
end
if models + 1 > tonumber(ARGV[5]) then return {1, models, stored} end
if stored + tonumber(ARGV[4]) > tonumber(ARGV[6]) then return {2, models, stored} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return {0, models, stored}
"""


class QuotaExceeded(Exception):
    """Storing one more upload would take the key past MAX_MODELS_PER_KEY or
    MAX_UPLOAD_BYTES_PER_KEY; the message names the limit and its setting."""

    def __init__(self, what: Literal["models", "bytes"], limit: int, stored: int) -> None:
        self.what, self.limit, self.stored = what, limit, stored
        self.setting = "MAX_MODELS_PER_KEY" if what == "models" else "MAX_UPLOAD_BYTES_PER_KEY"
        if what == "models":
            text = (f"this key already stores {stored} uploaded models, the most it may "
                    f"(the limit, {self.setting} = {limit})")
        else:
            text = (f"this key's uploads take {stored} bytes; with this one they would pass "
                    f"{limit} bytes (the limit, {self.setting})")
        super().__init__(f"{text}; delete an upload first")


class UploadLedger:
    """The per-owner record of uploads: read for listings and quotas, written on upload and
    delete."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._admit = redis.register_script(_ADMIT)

    def key(self, owner: str) -> str:
        return f"{self.settings.key_prefix}:uploads:{owner}"

    def stored(self, owner: str) -> dict[str, UploadSize]:
        """Each of the owner's uploads by name, with its size (rebuilt if Redis lost it)."""
        raw = {k.decode(): v for k, v in self.redis.hgetall(self.key(owner)).items()}
        if COMPLETE not in raw:
            raw = self._rebuild(owner)
        return {name: UploadSize.model_validate_json(value)
                for name, value in sorted(raw.items()) if not name.startswith("@")}

    def check_room(self, owner: str) -> int:
        """Bytes the owner may still store, or `QuotaExceeded` when it has no room for even
        one more upload (asked before an upload is received, so a full key sends nothing)."""
        stored = self.stored(owner)
        used = sum(size.bytes for size in stored.values())
        if len(stored) >= self.settings.max_models_per_key:
            raise QuotaExceeded("models", self.settings.max_models_per_key, len(stored))
        if used >= self.settings.max_upload_bytes_per_key:
            raise QuotaExceeded("bytes", self.settings.max_upload_bytes_per_key, used)
        return self.settings.max_upload_bytes_per_key - used

    def admit(self, owner: str, name: str, size: UploadSize) -> None:
        """Record `name` if the owner's quota has room for it, atomically; else raise
        `QuotaExceeded` (or `FileExistsError` when a concurrent upload took the name)."""
        for _ in range(REBUILD_TRIES):
            code, models, used = self._admit(
                keys=[self.key(owner)],
                args=[COMPLETE, name, size.model_dump_json(), size.bytes,
                      self.settings.max_models_per_key, self.settings.max_upload_bytes_per_key])
            if code == 0:
                return
            if code == 1:
                raise QuotaExceeded("models", self.settings.max_models_per_key, models)
            if code == 2:
                raise QuotaExceeded("bytes", self.settings.max_upload_bytes_per_key, used)
            if code == -2:
                raise FileExistsError(name)
            self._rebuild(owner)
        raise RuntimeError(f"the upload record of {owner!r} kept changing while rebuilt")

    def record(self, owner: str, name: str, size: UploadSize) -> None:
        """Write `name`'s size again once it is in place: the same value `admit` wrote, unless
        Redis lost the hash in between (then this field makes it incomplete: rebuilt next)."""
        self.redis.hset(self.key(owner), name, size.model_dump_json())

    def forget(self, owner: str, name: str) -> bool:
        """Remove `name`'s field (its upload is deleted, or was admitted and never placed);
        True when there was one."""
        pipe = self.redis.pipeline()
        pipe.hdel(self.key(owner), name)
        pipe.hincrby(self.key(owner), CHANGES, 1)
        removed, _ = pipe.execute()
        return bool(removed)

    def _rebuild(self, owner: str) -> dict[str, bytes]:
        """The hash, from the owner's folder (the self-heal); written only if nothing changed
        it meanwhile (WATCH), else measured again."""
        key = self.key(owner)
        fields: dict[str, bytes] = {}
        with self.redis.pipeline() as pipe:
            for _ in range(REBUILD_TRIES):
                try:
                    pipe.watch(key)
                    current = {k.decode(): v for k, v in pipe.hgetall(key).items()}
                    if COMPLETE in current:  # another reader rebuilt it first
                        return current
                    fields = {name: measure(folder).model_dump_json().encode()
                              for name, folder in uploaded_folders(self.settings, owner).items()}
                    fields[COMPLETE] = b"1"
                    pipe.multi()
                    pipe.delete(key)
                    pipe.hset(key, mapping=fields)
                    pipe.execute()
                    return fields
                except WatchError:
                    continue
        return fields  # right as of its walk; the hash stays untrusted, rebuilt on next read
