"""The long-lived parts every request uses: the Redis link, the stores and the router.

Built once per worker from the config; each store is picked here, Redis or memory, and the rest of
the gateway never asks which.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import metrics, tracing
from gateway.auth import Authenticator
from gateway.cache import ResponseCache, response_cache
from gateway.concurrency import ConcurrencyLimiter, concurrency_limiter
from gateway.deployment_quota import DeploymentQuotas
from gateway.keys import KeyStore, key_store
from gateway.ratelimit import RateLimiter, rate_limiter
from gateway.redis_conn import RedisLink
from gateway.response_store import ResponseStore, response_store
from gateway.settings import Settings
from gateway.usage import UsageStore, usage_store
from routing.config import GatewayConfig
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

    @classmethod
    def build(cls, config: GatewayConfig, redis_url: str | None, settings: Settings | None = None) -> "Services":
        settings = settings or Settings()
        link = RedisLink(redis_url, config.redis.timeout_s, config.redis.prefix, config.redis.degraded_for_s)
        p = config.redis.prefix
        keys = key_store(link.client, p)
        # The link's client has socket timeouts and no retries, which bound every call already;
        # a second, asyncio-level deadline per call would only cost time on the hot path.
        limiter = rate_limiter(link.client, p, timeout_s=None)
        # Deployments' rpm/tpm caps are counted by the same limiter (flushed with it), checked by the router.
        quotas = DeploymentQuotas(limiter, link)
        return cls(settings=settings, auth=Authenticator(settings.master_key, keys, link), link=link, keys=keys,
                   limiter=limiter,
                   cache=response_cache(link.client, p, max_entries=config.cache.max_entries, timeout_s=None),
                   usage=usage_store(link.client, p),
                   router=Router(hooks=tracing.AttemptSpans(), on_wait=metrics.observe_queue_wait, quotas=quotas),
                   responses=response_store(link.client, p, config.responses.max_entries),
                   concurrency=concurrency_limiter(link.client, p))
