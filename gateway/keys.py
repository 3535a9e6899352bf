"""Virtual API keys, stored hashed in Redis (or in memory without Redis).

A key is shown once, at creation; only its sha256 is stored. Every request
looks its key up in Redis, so a revocation or expiry applies on every replica
at once. If Redis cannot be reached, the last record this replica saw for
that key (if any) stands in, so an outage does not lock every caller out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from gateway.store_errors import StoreUnavailable, guard

log = logging.getLogger("llm_gateway.keys")

KEY_PREFIX = "sk-gw-"
MISSING: Any = object()  # "not read", as opposed to None, "read and absent"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_of(secret: str) -> str:
    """How listings show a key: the gateway's prefix and the last 4 characters of a minted key (as OpenAI
    shows its keys). An imported secret's format is unknown (it may be short, or a known prefix may be most
    of it), so only its last 4 characters are kept, and none of a short one."""
    if secret.startswith(KEY_PREFIX):
        return f"{KEY_PREFIX}…{secret[-4:]}"
    return f"…{secret[-4:]}" if len(secret) >= 24 else "(imported)"


@dataclass
class KeyRecord:
    id: str
    alias: str
    owner: str | None = None
    models: list[str] | None = None  # None: every route
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None
    budget_period: str = "monthly"  # daily | monthly | total
    expires_at: float | None = None  # unix seconds
    revoked: bool = False
    tier: str | None = None
    created_at: float = field(default_factory=time.time)
    display: str = ""  # the first characters, to recognise a key in listings

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


class KeyExists(Exception):
    """An imported secret that is already a key."""


EDITABLE = {"alias", "owner", "models", "rpm", "tpm", "budget_usd", "budget_period", "expires_at", "tier", "revoked"}


class KeyStore:
    def __init__(self, redis: Any | None, prefix: str = "gw:") -> None:
        self.redis = redis
        self.prefix = prefix
        self._memory: dict[str, bytes] = {}  # hash -> record (no Redis)
        self._ids: dict[str, str] = {}  # id -> hash (no Redis)
        self._last_seen: dict[str, KeyRecord] = {}  # hash -> record, for Redis outages only

    def _k(self, digest: str) -> str:
        return f"{self.prefix}key:{digest}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}keys"

    async def create(self, secret: str | None = None, **fields: Any) -> tuple[str, KeyRecord]:
        """A new key; `secret` imports one issued elsewhere (a migration) instead of minting one.

        Raises KeyExists when an imported secret is already stored."""
        secret = secret or KEY_PREFIX + secrets.token_urlsafe(32)
        digest = hash_key(secret)
        if await self._exists(digest):
            raise KeyExists()
        record = KeyRecord(id=uuid.uuid4().hex[:16], display=display_of(secret),
                           **{k: v for k, v in fields.items() if k in EDITABLE})
        await self._write(digest, record)
        return secret, record

    async def _exists(self, digest: str) -> bool:
        if self.redis is None:
            return digest in self._memory
        return bool(await guard(self.redis.exists(self._k(digest))))

    async def lookup_with(self, secret: str, extra_key: str | None) -> tuple[KeyRecord | None, Any]:
        """The key's record, plus the raw value of `extra_key` read in the same round trip (MGET).

        The extra value is `MISSING` when it was not read (no Redis, no extra key, or an outage
        answered from the last record seen)."""
        digest = hash_key(secret)
        extra: Any = MISSING
        if self.redis is None:
            raw = self._memory.get(digest)
        else:
            try:
                if extra_key is None:
                    raw = await guard(self.redis.get(self._k(digest)))
                else:
                    raw, extra = await guard(self.redis.mget((self._k(digest), extra_key)))
            except StoreUnavailable:
                if digest in self._last_seen:
                    return self._last_seen[digest], MISSING
                raise
        record = parse_record(raw)
        if record is None:
            self._last_seen.pop(digest, None)
            return None, extra
        self._last_seen[digest] = record
        return record, extra

    def remembered_tier(self, secret: str) -> str | None:
        """The tier this replica last saw for the key: a guess made before the lookup, checked after it."""
        record = self._last_seen.get(hash_key(secret))
        return record.tier if record else None

    async def get(self, key_id: str) -> KeyRecord | None:
        digest = await self._digest_of(key_id)
        if digest is None:
            return None
        raw = self._memory.get(digest) if self.redis is None else await guard(self.redis.get(self._k(digest)))
        return parse_record(raw)

    async def list(self) -> list[KeyRecord]:
        if self.redis is None:
            raws = [self._memory[d] for d in self._ids.values()]
        else:
            digests = await guard(self.redis.hvals(self._index))
            raws = await guard(self.redis.mget([self._k(d.decode()) for d in digests])) if digests else []
        records = (parse_record(r) for r in raws)
        return sorted((r for r in records if r is not None), key=lambda k: k.created_at)

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        digest = await self._digest_of(key_id)
        record = await self.get(key_id)
        if digest is None or record is None:
            return None
        for name, value in changes.items():
            if name in EDITABLE:
                setattr(record, name, value)
        await self._write(digest, record)
        return record

    async def revoke(self, key_id: str) -> KeyRecord | None:
        return await self.update(key_id, {"revoked": True})

    async def _digest_of(self, key_id: str) -> str | None:
        if self.redis is None:
            return self._ids.get(key_id)
        raw = await guard(self.redis.hget(self._index, key_id))
        return raw.decode() if raw else None

    async def _write(self, digest: str, record: KeyRecord) -> None:
        raw = orjson.dumps(record.public())
        if self.redis is None:
            self._memory[digest] = raw
            self._ids[record.id] = digest
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k(digest), raw)
            pipe.hset(self._index, record.id, digest)
            await guard(pipe.execute())
        if digest in self._last_seen:
            # The copy kept for Redis outages follows the change at once: a key revoked (or narrowed) here
            # must not work again on this replica when Redis next goes away.
            self._last_seen[digest] = record


_FIELDS = {f.name for f in dataclasses.fields(KeyRecord)}


def parse_record(raw: bytes | None) -> KeyRecord | None:
    """A stored record, read tolerantly: fields this version does not know (a newer replica wrote them,
    during a rolling upgrade) are ignored; a record that cannot be read is a logged miss, never a 500."""
    if not raw:
        return None
    try:
        data = orjson.loads(raw)
        return KeyRecord(**{k: v for k, v in data.items() if k in _FIELDS})
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        log.error("a key record in the store cannot be read (%s); treating it as absent", type(exc).__name__)
        return None
