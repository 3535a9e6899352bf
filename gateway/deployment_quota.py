"""Deployments' rpm/tpm caps counted by the gateway's rate limiter: routing's `QuotaStore`, made here.

Routing decides what a capped deployment means (routing/quota.py); this counts. The limiter is the one
keys and routes use (gateway/ratelimit.py: GCRA in Redis, shared by every replica, or this process's
twin without Redis), under subjects of their own, `dep:<name>`, so a deployment's minute is one budget
whichever replica, route or key sends to it. A Redis that cannot be asked is reported as such, and the
deployment's `rate_limit_failure` decides (open: send unchecked; closed: skip it).
"""

from __future__ import annotations

from gateway.ratelimit import LimitSpec, RateLimiter
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable
from routing.quota import Verdict


class DeploymentQuotas:
    def __init__(self, limiter: RateLimiter, link: RedisLink) -> None:
        self._limiter = limiter
        self._link = link

    @staticmethod
    def subject(deployment: str) -> str:
        return f"dep:{deployment}"

    async def take(self, deployment: str, rpm: int | None, tpm: int | None, tokens: int) -> Verdict:
        try:
            result = await self._limiter.acquire(self.subject(deployment), LimitSpec(rpm, tpm), tokens)
        except StoreUnavailable as exc:
            self._link.record_error(exc)
            return Verdict(False, unavailable=True)
        return Verdict(result.allowed, result.retry_after_s, result.reason)

    async def correct(self, deployment: str, rpm: int | None, tpm: int, delta_tokens: int) -> None:
        try:
            await self._limiter.adjust(self.subject(deployment), LimitSpec(rpm, tpm), delta_tokens)
        except StoreUnavailable as exc:
            self._link.record_error(exc)
