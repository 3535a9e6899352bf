"""The long-lived parts every request uses: the Redis links, the stores and the router.

Built once per worker from the config; each store is picked here, Redis or memory, and the rest of
the gateway never asks which. Everything is on `redis.url` but the response cache, which goes to
`redis.cache_url` when that is set (a server that may evict, apart from the keys and spend).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import metrics, redis_memory, tracing
from gateway.auth import Authenticator
from gateway.cache import ResponseCache, response_cache
from gateway.cache_separate import SeparateRedisCache
from gateway.concurrency import ConcurrencyLimiter, concurrency_limiter
from gateway.deployment_quota import DeploymentQuotas
from gateway.keys import KeyStore, key_store
from gateway.ratelimit import RateLimiter, rate_limiter
from gateway.redis_conn import RedisLink
from gateway.response_store import ResponseStore, response_store
from gateway.settings import Settings
from gateway.usage import UsageStore, usage_store
from routing.config import GatewayConfig
from routing.config_env import resolve as resolve_secret
from routing.router import Router


@dataclass
class Services:
    settings: Settings
    auth: Authenticator
    link: RedisLink
    keys: KeyStore
    limiter: RateLimiter
    cache: ResponseCache
    usage: UsageStore
    router: Router
    responses: ResponseStore
    concurrency: ConcurrencyLimiter
    cache_link: RedisLink | None = None  # the cache's own Redis (redis.cache_url); None: it shares `link`

    @classmethod
    def build(cls, config: GatewayConfig, redis_url: str | None, settings: Settings | None = None) -> "Services":
        settings = settings or Settings()
        link = RedisLink(redis_url, config.redis.timeout_s, config.redis.prefix, config.redis.degraded_for_s)
        p = config.redis.prefix
        keys = key_store(link.client, p)
        cache_url = resolve_secret(config.redis.cache_url)
        cache_link = (RedisLink(cache_url, config.redis.timeout_s, p, config.redis.degraded_for_s, role="cache redis")
                      if cache_url else None)
        # The link's client has socket timeouts and no retries, which bound every call already;
        # a second, asyncio-level deadline per call would only cost time on the hot path.
        cache = (SeparateRedisCache(cache_link, timeout_s=None) if cache_link is not None
                 else response_cache(link.client, p, max_entries=config.cache.max_entries, timeout_s=None))
        limiter = rate_limiter(link.client, p, timeout_s=None)
        # Deployments' rpm/tpm caps are counted by the same limiter (flushed with it), checked by the router.
        quotas = DeploymentQuotas(limiter, link)
        return cls(settings=settings, auth=Authenticator(settings.master_key, keys, link), link=link, keys=keys,
                   limiter=limiter, cache=cache,
                   usage=usage_store(link.client, p),
                   router=Router(hooks=tracing.AttemptSpans(), on_wait=metrics.observe_queue_wait, quotas=quotas),
                   responses=response_store(link.client, p, config.responses.max_entries),
                   concurrency=concurrency_limiter(link.client, p), cache_link=cache_link)

    async def check_redis_memory(self) -> list[str]:
        """At start-up: warn (in the log) when a Redis's memory policy could evict keys or let the cache fill it."""
        return await redis_memory.check(self.link.client, self.cache_link.client if self.cache_link else None)

    async def aclose(self) -> None:
        await self.link.aclose()
        if self.cache_link is not None:
            await self.cache_link.aclose()
