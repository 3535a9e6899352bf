"""Admission: who is calling, what the plan is, and whether budget and rate limits let the request in.

The plan and the cache key are made first, on the caller's tier as this replica last saw it, so that
the cache entry can be read in the same Redis round trip as the API key; their errors wait until the
caller is known (an anonymous caller of a gateway with keys gets its 401 first). Every Redis-backed
check fails open (rate limits unless a deployment says closed), so a Redis outage is never an outage
of the gateway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from backends.contract.errors import GatewayError
from backends.contract.priority import DEFAULT, Priority, Scheduling
from backends.contract.protocol import SamplingFields
from gateway import metrics
from gateway.accounting import Reservation
from gateway.auth import Principal, authorize_model
from gateway.cache_lookup import CacheLookup
from gateway.concurrency import Hold, WaitedTooLong
from gateway.keys import MISSING
from gateway.observe import RequestRecord
from gateway.priority_policy import decide
from gateway.ratelimit import LimitResult, LimitSpec
from gateway.services import Services
from gateway.store_errors import StoreUnavailable, unavailable
from routing.plan import Plan, make_plan
from routing.runtime import Runtime


@dataclass
class Admission:
    """A request that may run: its caller, plan, cache lookup and what the limiter holds for it."""

    principal: Principal
    plan: Plan
    lookup: CacheLookup
    fetched: Any  # the cache entry's raw value when it rode along with the key lookup, else MISSING
    reservation: Reservation | None = None
    headers: dict[str, str] = field(default_factory=dict)  # for the response: rate-limit headers so far
    scheduling: Scheduling = DEFAULT  # its class and tenant, for the scheduler and the engines
    queue_wait_s: float = 0.0  # waited for its key's or route's max_concurrent_requests


async def admit(svc: Services, runtime: Runtime, body: SamplingFields, headers: Mapping[str, str],
                rec: RequestRecord, preset: Principal | None = None, priority: Priority | None = None) -> Admission:
    """The request's admission, or the GatewayError that refuses it (401, 403, 404, 429, 503...).
    `preset`: the caller is known already (a batch line, as its batch's key): no key lookup.
    `priority`: the class the caller set (a batch line's); else the header's, the route's or the key's."""
    guessed_tier = svc.auth.remembered_tier(headers)
    early: GatewayError | None = None
    plan = lookup = None
    try:
        plan = make_plan(runtime, body, headers, guessed_tier)
        lookup = CacheLookup.prepare(runtime, plan, body, headers, svc.auth.enabled)
    except GatewayError as exc:
        early = exc
    prefetch = lookup.redis_key(svc.cache) if lookup is not None else None
    if preset is not None:
        principal, fetched = preset, MISSING
    else:
        principal, fetched = await svc.auth.authenticate_and_fetch(headers, prefetch)
    rec.key_alias = principal.alias
    if early is not None:
        raise early
    assert plan is not None and lookup is not None
    if principal.tier != guessed_tier and plan.tier_sensitive:  # a guess that mattered and missed: plan again
        replanned = make_plan(runtime, body, headers, principal.tier)
        if replanned.route is not plan.route:  # the prefetched entry belongs to another route
            lookup = CacheLookup.prepare(runtime, replanned, body, headers, svc.auth.enabled)
            fetched = MISSING
        plan = replanned
    admission = Admission(principal, plan, lookup, fetched)
    rec.route = plan.route.name
    authorize_model(principal, plan.route.name, body.model)
    admission.scheduling = decide(headers, plan.route.config, principal, priority)
    rec.priority = admission.scheduling.priority
    admission.headers["x-gateway-priority"] = rec.priority.label
    try:
        await check_budget(svc, principal)
        await hold_places(svc, admission, rec)
        admission.reservation = await reserve(svc, admission, body)
    except GatewayError as exc:
        rec.release_holds()  # a refused request holds no place
        if exc.status_code == 429:
            metrics.RATE_LIMITED.labels(plan.route.name, exc.code or "rate_limit").inc()
        raise
    return admission


async def hold_places(svc: Services, admission: Admission, rec: RequestRecord) -> None:
    """A place under the key's and the route's `max_concurrent_requests` (nothing to do, and no round trip,
    when neither has one), held by `rec` to the answer's end. Waits up to the route's `queue_s` (batch: its
    `total_s`), then 429 concurrency_limit_exceeded; a Redis that cannot be asked lets the request in."""
    key, route = admission.principal.key, admission.plan.route
    subjects: list[tuple[str, int, str]] = []
    if key is not None and key.max_concurrent_requests:
        subjects.append((f"key:{key.id}", key.max_concurrent_requests, "this API key"))
    if route.config.max_concurrent_requests:
        subjects.append((f"route:{route.name}", route.config.max_concurrent_requests, "this model"))
    if not subjects:
        return
    sched = admission.scheduling
    timeouts = route.config.timeouts
    budget = timeouts.total_s if sched.priority == Priority.BATCH else min(timeouts.queue_s, timeouts.total_s)
    started = time.monotonic()
    try:
        for subject, limit, who in subjects:
            left = budget - (time.monotonic() - started)
            try:
                hold: Hold = await svc.concurrency.acquire(subject, limit, sched.priority, max(0.0, left))
            except StoreUnavailable as exc:
                svc.link.record_error(exc)
                continue  # fail open
            except WaitedTooLong:
                raise concurrency_limited(who, limit, time.monotonic() - started) from None
            rec.holds.append(hold)
    finally:
        admission.queue_wait_s = time.monotonic() - started
        metrics.child(metrics.CONCURRENCY_WAIT, route.name, sched.priority.label).observe(admission.queue_wait_s)


def concurrency_limited(who: str, limit: int, waited_s: float) -> GatewayError:
    return GatewayError(f"Too many concurrent requests on {who} (at most {limit} at once); none finished within "
                        f"{waited_s:.3g}s. Please try again shortly.", status_code=429, error_type="rate_limit_error",
                        code="concurrency_limit_exceeded", headers={"Retry-After": "1", "retry-after-ms": "1000"})


async def check_budget(svc: Services, principal: Principal) -> None:
    key = principal.key
    if key is None or key.budget_usd is None:
        return
    try:
        spent = await svc.usage.spend(key.id, key.budget_period)
    except StoreUnavailable as exc:
        svc.link.record_error(exc)
        return  # fail open: the spend is still recorded once Redis is back
    if spent >= key.budget_usd:
        raise GatewayError(f"You exceeded your current quota (budget ${key.budget_usd:g} per {key.budget_period} "
                           f"period).", status_code=429, error_type="insufficient_quota", code="insufficient_quota",
                           headers={"x-should-retry": "false"})


async def reserve(svc: Services, admission: Admission, body: SamplingFields) -> Reservation | None:
    """Count the request against the key's and the route's limits, reserving its tokens (None: no limits):
    the prompt and the plan's max_tokens (usage.default_max_tokens when the request names none), times n."""
    principal, plan, headers = admission.principal, admission.plan, admission.headers
    subjects: list[tuple[str, LimitSpec]] = []
    if principal.key and (principal.key.rpm or principal.key.tpm):
        subjects.append((f"key:{principal.key.id}", LimitSpec(principal.key.rpm, principal.key.tpm)))
    rl = plan.route.config.rate_limit
    if rl.rpm or rl.tpm:
        subjects.append((f"route:{plan.route.name}", LimitSpec(rl.rpm, rl.tpm)))
    if not subjects:
        return None
    prompt_tokens = plan.tokens.counted()
    amount = prompt_tokens + plan.max_tokens * body.n  # max_tokens is 0 for embeddings: nothing is generated
    granted: list[tuple[str, LimitSpec]] = []
    for subject, spec in subjects:
        try:
            result = await svc.limiter.acquire(subject, spec, amount)
        except StoreUnavailable as exc:
            svc.link.record_error(exc)
            _fail_closed_deployments(plan)
            continue
        headers.update(result.headers())
        if not result.allowed:
            for done_subject, done_spec in granted:  # give back what the other subject reserved
                if done_spec.tpm:
                    await _quiet(svc.limiter.adjust(done_subject, done_spec, -amount))
            raise _rate_limited(result, subject, headers)
        granted.append((subject, spec))
    return Reservation(granted, amount, prompt_tokens)


def _fail_closed_deployments(plan: Plan) -> None:
    """Redis is down: deployments whose limits fail closed are off the plan; none left is a 503."""
    keep = [d for d in plan.candidates if d.config.rate_limit_failure == "open"]
    if not keep:
        raise unavailable("Rate limits cannot be checked", "rate_limiter_unavailable")
    plan.candidates[:] = keep


def _rate_limited(result: LimitResult, subject: str, headers: dict[str, str]) -> GatewayError:
    what = "tokens" if result.reason == "tokens" else "requests"
    who = "this API key" if subject.startswith("key:") else "this model"
    if result.retry_after_s < 0:
        return GatewayError(f"This request needs more tokens than the per-minute limit of {who} allows.",
                            status_code=429, error_type="rate_limit_error", code="rate_limit_exceeded",
                            headers={**headers, "x-should-retry": "false"})
    retry = max(result.retry_after_s, 0.001)
    return GatewayError(f"Rate limit reached for {what} on {who}. Please try again in {retry:.2f}s.",
                        status_code=429, error_type="rate_limit_error", code="rate_limit_exceeded",
                        headers={**headers, "Retry-After": str(max(1, int(retry + 0.999))),
                                 "retry-after-ms": str(int(retry * 1000))})


async def _quiet(aw: Any) -> None:
    try:
        await aw
    except StoreUnavailable:
        pass
