"""The response cache on a Redis of its own (`redis.cache_url`), apart from the keys and the spend.

That server can run `maxmemory` with `allkeys-lru` while the durable one runs `noeviction`: maxmemory
and the eviction policy belong to a server, so another DB of the same one would not do. Its failures are
its own link's: counted and logged there (so the durable Redis is not reported degraded when only the
cache's is down) and answered as the callers answer a shared cache's StoreUnavailable: a miss, nothing
stored. Its entries cannot ride along with the key lookup, which asks the other server.
"""

from __future__ import annotations

from typing import Any

from gateway.cache import CacheEntry, RedisResponseCache
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable


class SeparateRedisCache(RedisResponseCache):
    """A RedisResponseCache that fails open by itself, on `link`'s account."""

    rides_with_keys = False

    def __init__(self, link: RedisLink, timeout_s: float | None = None) -> None:
        if link.client is None:
            raise ValueError("the cache's own Redis needs a URL")
        super().__init__(link.client, link.prefix, timeout_s)
        self.link = link

    async def get(self, key: str) -> CacheEntry | None:
        try:
            return await super().get(key)
        except StoreUnavailable as exc:
            self.link.record_error(exc)
            return None

    async def put(self, key: str, body: dict[str, Any], *, ttl_s: float, stale_grace_s: float = 0.0,
                  max_entry_bytes: int = 1_048_576) -> bool:
        try:
            return await super().put(key, body, ttl_s=ttl_s, stale_grace_s=stale_grace_s,
                                     max_entry_bytes=max_entry_bytes)
        except StoreUnavailable as exc:
            self.link.record_error(exc)
            return False

    async def delete(self, key: str) -> None:
        try:
            await super().delete(key)
        except StoreUnavailable as exc:
            self.link.record_error(exc)
