"""Virtual API keys, stored hashed in Redis (or in memory without Redis).

A key is shown once, at creation; only its sha256 is stored. Every request
looks its key up in Redis, so a revocation or expiry applies on every replica
at once. If Redis cannot be reached, the last record this replica saw for
that key (if any) stands in, so an outage does not lock every caller out.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.store_errors import StoreUnavailable, guard

if TYPE_CHECKING:
    import redis.asyncio

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
    # Scheduling (gateway/priority_policy.py): the best class its requests may use (None: interactive), its
    # share among tenants waiting for the same deployment (None: 1), and its requests in flight at once.
    priority: str | None = None
    weight: float | None = None
    max_concurrent_requests: int | None = None
    created_at: float = field(default_factory=time.time)
    display: str = ""  # the first characters, to recognise a key in listings

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def expired(self) -> bool:
        return self.expires_at is not None and time.time() >= self.expires_at


class KeyExists(Exception):
    """An imported secret that is already a key."""


EDITABLE = {"alias", "owner", "models", "rpm", "tpm", "budget_usd", "budget_period", "expires_at", "tier", "revoked",
            "priority", "weight", "max_concurrent_requests"}


class KeyStore(abc.ABC):
    """Where key records live, by sha256 of the secret: shared in Redis, or in this process without it.

    `key_store` picks one of the two once; every method behaves the same in both (the contract tests
    hold them to it), except that only Redis can fail (StoreUnavailable) and only Redis reads an extra
    value along with a key. Both remember the last record each lookup saw: `remembered_tier` reads it
    before a lookup, and the Redis store answers from it when Redis is down.
    """

    def __init__(self) -> None:
        self._last_seen: dict[str, KeyRecord] = {}  # hash -> record last looked up

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

    @abc.abstractmethod
    async def lookup_with(self, secret: str, extra_key: str | None) -> tuple[KeyRecord | None, Any]:
        """The key's record, plus the raw value of `extra_key` read in the same round trip (MGET).

        The extra value is `MISSING` when it was not read (no Redis, no extra key, or an outage
        answered from the last record seen)."""

    def remembered_tier(self, secret: str) -> str | None:
        """The tier this replica last saw for the key: a guess made before the lookup, checked after it."""
        record = self._last_seen.get(hash_key(secret))
        return record.tier if record else None

    @abc.abstractmethod
    async def get(self, key_id: str) -> KeyRecord | None:
        """The record of the key with this id (not its secret), or None."""

    @abc.abstractmethod
    async def list(self) -> list[KeyRecord]:
        """Every key, oldest first."""

    async def update(self, key_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        digest = await self._digest_of(key_id)
        record = await self.get(key_id)
        if digest is None or record is None:
            return None
        for name, value in changes.items():
            if name in EDITABLE:
                setattr(record, name, value)
        await self._write(digest, record)
        if digest in self._last_seen:
            # What this replica remembers follows the change at once (both stores): a key revoked (or
            # narrowed) here must not work again on this replica when Redis next goes away, and its
            # remembered tier is its new one.
            self._last_seen[digest] = record
        return record

    async def revoke(self, key_id: str) -> KeyRecord | None:
        return await self.update(key_id, {"revoked": True})

    def _remember(self, digest: str, raw: bytes | None) -> KeyRecord | None:
        """Parse what a lookup read, and keep it (or forget the key) for `remembered_tier` and outages."""
        record = parse_record(raw)
        if record is None:
            self._last_seen.pop(digest, None)
        else:
            self._last_seen[digest] = record
        return record

    @abc.abstractmethod
    async def _exists(self, digest: str) -> bool: ...

    @abc.abstractmethod
    async def _digest_of(self, key_id: str) -> str | None: ...

    @abc.abstractmethod
    async def _write(self, digest: str, record: KeyRecord) -> None: ...


class RedisKeyStore(KeyStore):
    """Records at prefix + "key:" + hash, and an id -> hash index, so every replica sees every change."""

    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:") -> None:
        super().__init__()
        self.redis = redis
        self.prefix = prefix

    def _k(self, digest: str) -> str:
        return f"{self.prefix}key:{digest}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}keys"

    async def _exists(self, digest: str) -> bool:
        return bool(await guard(self.redis.exists(self._k(digest))))

    async def lookup_with(self, secret: str, extra_key: str | None) -> tuple[KeyRecord | None, Any]:
        digest = hash_key(secret)
        extra: Any = MISSING
        try:
            if extra_key is None:
                raw = await guard(self.redis.get(self._k(digest)))
            else:
                raw, extra = await guard(self.redis.mget((self._k(digest), extra_key)))
        except StoreUnavailable:
            if digest in self._last_seen:
                return self._last_seen[digest], MISSING
            raise
        return self._remember(digest, raw), extra

    async def get(self, key_id: str) -> KeyRecord | None:
        digest = await self._digest_of(key_id)
        if digest is None:
            return None
        return parse_record(await guard(self.redis.get(self._k(digest))))

    async def list(self) -> list[KeyRecord]:
        digests = await guard(self.redis.hvals(self._index))
        raws = await guard(self.redis.mget([self._k(d.decode()) for d in digests])) if digests else []
        return _oldest_first(raws)

    async def _digest_of(self, key_id: str) -> str | None:
        raw = await guard(self.redis.hget(self._index, key_id))
        return raw.decode() if raw else None

    async def _write(self, digest: str, record: KeyRecord) -> None:
        raw = orjson.dumps(record.public())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k(digest), raw)
            pipe.hset(self._index, record.id, digest)
            await guard(pipe.execute())


class MemoryKeyStore(KeyStore):
    """Records in this process (one replica, no Redis), serialized as Redis would hold them."""

    def __init__(self) -> None:
        super().__init__()
        self._memory: dict[str, bytes] = {}  # hash -> record
        self._ids: dict[str, str] = {}  # id -> hash

    async def _exists(self, digest: str) -> bool:
        return digest in self._memory

    async def lookup_with(self, secret: str, extra_key: str | None) -> tuple[KeyRecord | None, Any]:
        digest = hash_key(secret)
        return self._remember(digest, self._memory.get(digest)), MISSING

    async def get(self, key_id: str) -> KeyRecord | None:
        digest = self._ids.get(key_id)
        return None if digest is None else parse_record(self._memory.get(digest))

    async def list(self) -> list[KeyRecord]:
        return _oldest_first([self._memory[d] for d in self._ids.values()])

    async def _digest_of(self, key_id: str) -> str | None:
        return self._ids.get(key_id)

    async def _write(self, digest: str, record: KeyRecord) -> None:
        self._memory[digest] = orjson.dumps(record.public())
        self._ids[record.id] = digest


def key_store(redis: redis.asyncio.Redis | None, prefix: str = "gw:") -> KeyStore:
    """The Redis store when there is a client, else the in-process one."""
    return MemoryKeyStore() if redis is None else RedisKeyStore(redis, prefix)


def _oldest_first(raws: list[bytes | None]) -> list[KeyRecord]:
    records = (parse_record(r) for r in raws)
    return sorted((r for r in records if r is not None), key=lambda k: k.created_at)


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
