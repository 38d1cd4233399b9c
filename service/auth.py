"""API keys: created by the CLI, stored only as sha256 hashes in Redis, checked per request.

Keys are 256-bit random tokens, so a plain sha256 is enough (no password-stretching needed: a
guess is as hard as the token itself) and keeps each request's check to one Redis GET.
A request may present its key as `X-API-Key`, `Authorization: Bearer <key>`, or the HttpOnly
cookie `compressors_key` that the dashboard sets at sign-in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from redis import Redis

from jobs.records import utcnow

COOKIE_NAME = "compressors_key"
COOKIE_MAX_AGE = 7 * 86400  # a browser signs in again weekly; revoking the key ends it at once
KEY_PREFIX = "ck_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name owns jobs and models; admins see everything."""

    name: str
    admin: bool

    def can_see(self, owner: str) -> bool:
        return self.admin or hmac.compare_digest(owner, self.name)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_from_headers(headers: Any, cookies: Any) -> str | None:
    """The presented key, from the first of X-API-Key, Authorization Bearer, cookie."""
    if headers.get("x-api-key"):
        return headers["x-api-key"].strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return cookies.get(COOKIE_NAME) or None


def set_key_cookie(response: Any, key: str, secure: bool) -> None:
    """The one sign-in cookie (dashboard form and POST /api/v1/session): HttpOnly, so page
    scripts cannot read it; SameSite=Strict, so other sites cannot make a browser send it."""
    response.set_cookie(COOKIE_NAME, key, max_age=COOKIE_MAX_AGE, path="/", httponly=True,
                        samesite="strict", secure=secure)


def clear_key_cookie(response: Any) -> None:
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict")


class KeyStore:
    """Create, list, revoke and verify keys; Redis keys live under the service prefix."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix

    def _key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def _index(self) -> str:
        return f"{self.prefix}:apikeys"

    def create(self, name: str, admin: bool = False) -> str:
        """Store a new key and return it in clear text (shown once, never stored)."""
        if not _NAME.match(name):
            raise ValueError("key name: 1-64 letters, digits, '_', '.', '-', starting alnum")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(key)
        entry = {"name": name, "admin": admin, "created_at": utcnow(), "id": digest[:12]}
        if not self.redis.hsetnx(self._index(), name, digest):
            raise ValueError(f"a key named {name!r} exists; revoke it first")
        self.redis.set(self._key(digest), json.dumps(entry))
        return key

    def verify(self, key: str | None) -> Principal | None:
        if not key:
            return None
        return self.principal(self.redis.get(self.redis_key(key)))

    async def averify(self, aredis: Any, key: str | None) -> Principal | None:
        """The same check on an asyncio Redis client, for request handling without a thread."""
        if not key:
            return None
        return self.principal(await aredis.get(self.redis_key(key)))

    def redis_key(self, key: str) -> str:
        return self._key(hash_key(key))

    @staticmethod
    def principal(raw: bytes | None) -> Principal | None:
        if raw is None:
            return None
        entry = json.loads(raw)
        return Principal(entry["name"], bool(entry["admin"]))

    def list(self) -> list[dict[str, Any]]:
        entries = []
        for digest in self.redis.hvals(self._index()):
            raw = self.redis.get(self._key(digest.decode()))
            if raw is not None:
                entries.append(json.loads(raw))
        return sorted(entries, key=lambda e: e["name"])

    def revoke(self, name: str) -> bool:
        digest = self.redis.hget(self._index(), name)
        if digest is None:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(self._key(digest.decode()))
        pipe.hdel(self._index(), name)
        pipe.execute()
        return True
