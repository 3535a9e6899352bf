"""Response cache: request keys, client directives, and a Redis (or in-process) store.

Stored bodies are always the NON-streamed OpenAI shape (`chat.completion` or
`text_completion`), so one entry serves both streamed and non-streamed
requests (see `gateway.cache_replay` for assembling and replaying streams).
The store fails loudly (`StoreUnavailable`) and fast (`timeout_s`) so callers
can fail open: a slow cache must never be slower than no cache.
"""

from __future__ import annotations

import abc
import hashlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Mapping, TypeVar

import orjson

from gateway.cache_memory import MemoryLRU
from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")

# Fields that don't change what the model generates, so they stay out of the key:
# - stream, stream_options: transport only; entries are stored non-streamed and replayed.
# - user, safety_identifier, metadata, prompt_cache_key, prompt_cache_retention, prompt_cache_options:
#   attribution/hints. (`moderation` stays in: it may change the answer.)
# - store, service_tier: billing/retention on OpenAI's side.
EXCLUDED_FIELDS = frozenset({
    "stream", "stream_options", "user", "safety_identifier", "metadata", "store",
    "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
})
TTL_HEADER = "x-gateway-cache-ttl"


def canonical_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a request body that decides the output, in one spelling.

    `max_completion_tokens` wins over `max_tokens` (as in `ChatCompletionRequest`) and is
    stored as `max_tokens`; `stop: "x"` equals `stop: ["x"]`; top-level nulls equal absent.
    """
    req = {k: v for k, v in body.items() if k not in EXCLUDED_FIELDS and v is not None}
    mct = req.pop("max_completion_tokens", None)
    if mct is not None:
        req["max_tokens"] = mct
    if isinstance(req.get("stop"), str):
        req["stop"] = [req["stop"]]
    return req


def cache_key(namespace: str, endpoint: str, body: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical request; callers add their own prefix."""
    doc = {"ns": namespace, "ep": endpoint, "req": canonical_request(body)}
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def is_deterministic(body: Mapping[str, Any]) -> bool:
    """Worth caching by default: greedy (temperature 0) or seeded. OpenAI's default temperature is 1."""
    temp = body.get("temperature")
    if isinstance(temp, (int, float)) and not isinstance(temp, bool) and temp == 0:
        return True
    seed = body.get("seed")
    return isinstance(seed, int) and not isinstance(seed, bool)


@dataclass(frozen=True)
class CacheDirectives:
    no_cache: bool = False  # don't serve from the cache (a fresh answer may still be stored)
    no_store: bool = False  # don't store this answer
    ttl_s: float | None = None  # client-chosen freshness, from x-gateway-cache-ttl


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; Starlette's Headers are not
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def cache_control(headers: Mapping[str, str]) -> CacheDirectives:
    """Parse Cache-Control (no-cache, no-store) and x-gateway-cache-ttl; a bad TTL raises ValueError."""
    directives = set()
    for part in (_header(headers, "cache-control") or "").split(","):
        directives.add(part.split("=", 1)[0].strip().lower())
    ttl: float | None = None
    raw = _header(headers, TTL_HEADER)
    if raw is not None:
        try:
            ttl = float(raw.strip())
        except ValueError:
            ttl = None
        if ttl is None or not math.isfinite(ttl) or ttl <= 0:
            raise ValueError(f"Invalid {TTL_HEADER} header {raw!r}: expected a positive number of seconds.")
    return CacheDirectives(no_cache="no-cache" in directives, no_store="no-store" in directives, ttl_s=ttl)


@dataclass
class CacheEntry:
    body: dict[str, Any]
    stored_at: float  # wall-clock (time.time()) seconds, shared across gateway processes
    fresh_until: float
    stale_until: float

    @property
    def fresh(self) -> bool:
        return time.time() < self.fresh_until

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.stored_at)


class ResponseCache(abc.ABC):
    """get/put/delete of response bodies, by key: in Redis (prefix + "cache:" + key) or in this process.

    `response_cache` picks the store once. Both hold the same serialized bytes, so size limits, expiry and
    `decode` mean the same thing in both (the contract tests hold them to it); only Redis can fail, with
    StoreUnavailable, within `timeout_s`.
    """

    redis: redis.asyncio.Redis | None  # the client when Redis-backed (so callers can read along with a key)
    # Its entries sit on the same Redis as the API keys, so one can be read in the key lookup's round trip
    # (not so for a cache on a Redis of its own, `redis.cache_url`: gateway/cache_separate.py).
    rides_with_keys = True

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def redis_key(self, key: str) -> str:
        return f"{self.prefix}cache:{key}"

    @abc.abstractmethod
    async def get(self, key: str) -> CacheEntry | None:
        """A fresh or stale entry (check `.fresh`), or None when absent or past its stale grace."""

    @staticmethod
    def decode(raw: Any) -> CacheEntry | None:
        """A stored value (read by `get`, or fetched along with something else) as an entry, or None."""
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            entry = CacheEntry(body=doc["body"], stored_at=float(doc["stored_at"]),
                               fresh_until=float(doc["fresh_until"]), stale_until=float(doc["stale_until"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # foreign or corrupt value: a miss, and the next put overwrites it
        if time.time() >= entry.stale_until or not isinstance(entry.body, dict):
            return None
        return entry

    @abc.abstractmethod
    async def put(self, key: str, body: dict[str, Any], *, ttl_s: float, stale_grace_s: float = 0.0,
                  max_entry_bytes: int = 1_048_576) -> bool:
        """Store a non-streamed body; False (nothing stored) when it serializes past max_entry_bytes."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...


def _payload(body: dict[str, Any], now: float, ttl_s: float, stale_grace_s: float,
             max_entry_bytes: int) -> bytes | None:
    """The entry as both stores keep it (it expires at now + ttl_s + stale_grace_s), or None when it
    serializes past max_entry_bytes."""
    if not ttl_s > 0 or stale_grace_s < 0:
        raise ValueError("ttl_s must be > 0 and stale_grace_s >= 0")
    doc = {"body": body, "stored_at": now, "fresh_until": now + ttl_s, "stale_until": now + ttl_s + stale_grace_s}
    payload = orjson.dumps(doc)
    return None if len(payload) > max_entry_bytes else payload


class RedisResponseCache(ResponseCache):
    """Entries shared by every replica; Redis bounds them by its maxmemory policy and each entry's PX
    expiry (ttl + stale grace)."""

    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:", timeout_s: float | None = 0.1) -> None:
        super().__init__(prefix)
        self.redis = redis
        self.timeout_s = timeout_s

    async def _call(self, op: Awaitable[T]) -> T:
        """Bounded by timeout_s; slow, unreachable or erroring Redis raises StoreUnavailable."""
        return await guard(op, self.timeout_s)

    async def get(self, key: str) -> CacheEntry | None:
        return self.decode(await self._call(self.redis.get(self.redis_key(key))))

    async def put(self, key: str, body: dict[str, Any], *, ttl_s: float, stale_grace_s: float = 0.0,
                  max_entry_bytes: int = 1_048_576) -> bool:
        payload = _payload(body, time.time(), ttl_s, stale_grace_s, max_entry_bytes)
        if payload is None:
            return False
        px = max(1, math.ceil((ttl_s + stale_grace_s) * 1000))
        await self._call(self.redis.set(self.redis_key(key), payload, px=px))
        return True

    async def delete(self, key: str) -> None:
        await self._call(self.redis.delete(self.redis_key(key)))


class MemoryResponseCache(ResponseCache):
    """Entries in this process (one replica, no Redis), at most `max_entries`, least recently used out first."""

    redis = None

    def __init__(self, prefix: str = "gw:", max_entries: int = 10_000) -> None:
        super().__init__(prefix)
        self.memory = MemoryLRU(max_entries)

    async def get(self, key: str) -> CacheEntry | None:
        return self.decode(self.memory.get(key))

    async def put(self, key: str, body: dict[str, Any], *, ttl_s: float, stale_grace_s: float = 0.0,
                  max_entry_bytes: int = 1_048_576) -> bool:
        now = time.time()
        payload = _payload(body, now, ttl_s, stale_grace_s, max_entry_bytes)
        if payload is None:
            return False
        self.memory.put(key, payload, now + ttl_s + stale_grace_s)
        return True

    async def delete(self, key: str) -> None:
        self.memory.delete(key)


def response_cache(redis: redis.asyncio.Redis | None, prefix: str = "gw:", max_entries: int = 10_000,
                   timeout_s: float | None = 0.1) -> ResponseCache:
    """The Redis cache when there is a client (`timeout_s` bounds each call), else an in-process LRU of
    `max_entries`."""
    if redis is None:
        return MemoryResponseCache(prefix, max_entries)
    return RedisResponseCache(redis, prefix, timeout_s)
