"""Deployment caps: a deployment's `rpm` and `tpm`, the upstream's own quota, checked before each attempt.

A deployment at its cap is skipped like a full one: the router goes on to the next deployment, and when
none is left the client gets 429 `rate_limit_exceeded` with `Retry-After` (when the soonest cap frees).
So the upstream never sees a request it would refuse with a 429 of its own.

What is counted, per attempt sent to the deployment:
- one request, and the request's estimated tokens: the prompt (`Plan.tokens.counted()`) plus what it
  may generate (`max_tokens`, or `usage.default_max_tokens` when it names none, times `n`: the plan's
  `max_tokens`, as for a key's and a route's tpm), reserved up front
  so that concurrent requests cannot all squeeze under the cap;
- once the answer is complete, the reservation is corrected to the tokens it really used (the answer's
  `usage`; without one, the prompt estimate and the chunks relayed), as the gateway corrects a key's
  TPM; a stream continued elsewhere corrects each leg on its own deployment;
- an attempt that failed before answering gives its tokens back (it produced none), except a timeout:
  the upstream may still be generating, so its reservation stands. The request stays counted either way.

Providers that count the estimate itself against their quota (Azure counts prompt + max_tokens when a
request arrives) are matched best by a client that sends max_tokens; set `tpm` a little under such a quota.

Routing only decides; counting is a `QuotaStore`, injected (gateway/services.py gives the gateway's rate
limiter: Redis, shared by every replica, or this process's). A Router without one enforces no caps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from backends.aio import to_the_end
from backends.contract.errors import GatewayError, UpstreamTimeout
from backends.contract.protocol import SamplingFields
from routing.deployment import Deployment
from routing.outcome import Leg

log = logging.getLogger("llm_gateway.routing")


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: float = 0.0  # until the cap has room for this request; -1: it never will (tokens > tpm)
    reason: str | None = None  # "requests" | "tokens" when refused
    unavailable: bool = False  # the store could not be asked (then `rate_limit_failure` decides)


class QuotaStore(Protocol):
    """Counts requests and tokens per deployment name, per minute, on every replica that shares it."""

    async def take(self, deployment: str, rpm: int | None, tpm: int | None, tokens: int) -> Verdict:
        """Reserve 1 request and `tokens` tokens, both or neither."""

    async def correct(self, deployment: str, rpm: int | None, tpm: int, delta_tokens: int) -> None:
        """Correct a reservation once the tokens really used are known (never raises)."""


class DeploymentCapped(GatewayError):
    """Every deployment left was at its cap: come back when the soonest one frees."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True  # for the last resort and a stale cache entry: nothing was wrong with the request
    counts_against_breaker = False


class QuotaUnavailable(GatewayError):
    """A deployment whose caps fail closed, while they cannot be checked."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "rate_limiter_unavailable"
    retryable = True
    counts_against_breaker = False


def capped(dep: Deployment) -> bool:
    return bool(dep.config.rpm or dep.config.tpm)


@dataclass
class _Hold:
    deployment: Deployment
    tokens: int  # reserved


class Quotas:
    """One request's holds on its deployments' caps: taken per attempt, given back or corrected after."""

    def __init__(self, store: QuotaStore | None, request: SamplingFields, prompt_tokens: Any, max_tokens: int,
                 route: str) -> None:
        self._store = store
        self._request = request
        self._prompt = prompt_tokens  # the plan's PromptTokens: counted only if a deployment has a tpm
        self._max_tokens = max_tokens
        self._route = route
        self._soonest: float | None = None  # the shortest Retry-After of the caps met so far (-1: never)
        self._pending: _Hold | None = None  # the hold of the attempt in progress
        self._answered: list[_Hold] = []  # holds of the attempts that answered (a stream's legs), in order

    def estimate(self) -> int:
        n = getattr(self._request, "n", None) or 1
        return self._prompt.counted() + self._max_tokens * n

    async def take(self, dep: Deployment) -> GatewayError | None:
        """None: `dep` may be sent this attempt (its reservation held); else why not (429, or 503)."""
        cfg = dep.config
        if self._store is None or not capped(dep):
            return None
        tokens = self.estimate() if cfg.tpm else 0
        try:
            verdict = await self._store.take(dep.name, cfg.rpm, cfg.tpm, tokens)
        except Exception:  # a store's bug must not fail the request: as if it could not be asked
            log.exception("the caps of deployment %s could not be checked", dep.name)
            verdict = Verdict(False, unavailable=True)
        if verdict.unavailable:
            if cfg.rate_limit_failure == "open":
                return None  # unchecked, and nothing held to correct
            return QuotaUnavailable(f"The rate limits of '{self._route}' cannot be checked right now.",
                                    headers={"Retry-After": "1"})
        if not verdict.allowed:
            return self._refusal(dep, verdict)
        if cfg.tpm:
            self._pending = _Hold(dep, tokens)
        return None

    def _refusal(self, dep: Deployment, verdict: Verdict) -> DeploymentCapped:
        wait, soonest = verdict.retry_after_s, self._soonest
        if soonest is None or soonest < 0 or 0 <= wait < soonest:
            self._soonest = soonest = wait
        log.info("deployment %s is at its %s-per-minute cap: skipped", dep.name, verdict.reason or "requests")
        if soonest < 0:
            return DeploymentCapped(f"This request needs more tokens than the per-minute limits of the "
                                    f"deployments of '{self._route}' allow.", headers={"x-should-retry": "false"})
        wait = max(soonest, 0.001)
        return DeploymentCapped(
            f"Rate limit reached for {verdict.reason or 'requests'} on the deployments of '{self._route}'. "
            f"Please try again in {wait:.2f}s.",
            headers={"Retry-After": str(max(1, int(wait + 0.999))), "retry-after-ms": str(int(wait * 1000))})

    def answered(self) -> None:
        """The attempt in progress answered: its hold waits for the answer's usage."""
        if self._pending is not None:
            self._answered.append(self._pending)
            self._pending = None

    async def failed(self, exc: BaseException) -> None:
        """The attempt in progress failed: give its tokens back, unless it timed out (see the module)."""
        hold, self._pending = self._pending, None
        if hold is not None and isinstance(exc, GatewayError) and not isinstance(exc, UpstreamTimeout):
            await self._correct(hold, -hold.tokens)

    async def settle_body(self, body: Any) -> None:
        """A whole answer arrived: correct its hold to its usage."""
        holds, self._answered = self._answered, []
        if holds:
            usage = _usage(body)
            used = int(usage.get("prompt_tokens") or self._prompt.counted()) + int(usage.get("completion_tokens") or 0)
            await self._correct(holds[-1], used - holds[-1].tokens)

    async def settle_stream(self, usage: dict[str, Any] | None, content_frames: int, legs: list[Leg],
                            last: Deployment) -> None:
        """A stream ended (however it ended): correct each leg's hold to what that leg used. The answer's
        usage is the whole answer's: the earlier legs keep what they counted, `last` gets the rest."""
        holds, self._answered = self._answered, []
        if not holds:
            return
        prompt = int((usage or {}).get("prompt_tokens") or self._prompt.counted())
        completion = int((usage or {}).get("completion_tokens") or content_frames)
        used = {id(leg.deployment): leg.prompt_tokens + leg.completion_tokens for leg in legs}
        used[id(last)] = (max(0, prompt - sum(leg.prompt_tokens for leg in legs))
                          + max(0, completion - sum(leg.completion_tokens for leg in legs)))
        for hold in holds:
            n = used.pop(id(hold.deployment), None)
            if n is not None:
                await self._correct(hold, n - hold.tokens)

    async def _correct(self, hold: _Hold, delta: int) -> None:
        """Tell the store, even when the request is cancelled meanwhile (the correction runs on)."""
        cfg = hold.deployment.config
        if not delta or self._store is None or not cfg.tpm:
            return
        try:
            await to_the_end(self._store.correct(hold.deployment.name, cfg.rpm, cfg.tpm, delta))
        except Exception:
            log.exception("the TPM correction of deployment %s failed", hold.deployment.name)


def _usage(body: Any) -> dict[str, Any]:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}
    usage = body.get("usage") if isinstance(body, dict) else None
    return usage if isinstance(usage, dict) else {}
