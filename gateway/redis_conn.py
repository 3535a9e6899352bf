"""The shared Redis connection, and a record of how well it is doing.

Short timeouts and no client-side retries: a Redis outage must cost each
request at most one timeout, after which callers fail open (cache) or follow
the deployment's rate-limit policy. redis-py reconnects by itself on the next
call, so recovery needs no action here; this module only counts errors for
`/ready` and `/metrics`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.metrics import REDIS_ERRORS

log = logging.getLogger("llm_gateway.redis")


class RedisLink:
    """One Redis server: the durable one (`redis.url`: keys, usage, limits, batches) or the cache's own
    (`redis.cache_url`); `role` names it in the log."""

    def __init__(self, url: str | None, timeout_s: float = 0.25, prefix: str = "gw:",
                 degraded_for_s: float = 10.0, role: str = "redis") -> None:
        self.url = url
        self.role = role
        self.prefix = prefix
        self.degraded_for_s = degraded_for_s  # after an error, report "degraded" this long
        self.client: aioredis.Redis | None = None
        if url:
            self.client = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
                health_check_interval=0, max_connections=512)
        self.errors = 0
        self._last_error_at = 0.0
        self._last_error: str | None = None

    def record_error(self, exc: BaseException) -> None:
        REDIS_ERRORS.inc()
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_at > self.degraded_for_s:  # log once per episode, not per request
            log.warning("%s unavailable (%s); failing open where configured", self.role,
                        type(exc.__cause__ or exc).__name__)
        self._last_error_at = now
        self._last_error = type(exc.__cause__ or exc).__name__

    @property
    def degraded(self) -> bool:
        return self.client is not None and time.monotonic() - self._last_error_at < self.degraded_for_s

    def status(self) -> dict[str, Any]:
        if self.client is None:
            return {"state": "disabled", "detail": "no Redis URL: in-process cache, keys and limits"}
        out: dict[str, Any] = {"state": "degraded" if self.degraded else "ok", "errors": self.errors}
        if self.degraded:
            out["last_error"] = self._last_error
        return out

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
