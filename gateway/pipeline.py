"""One request, front to back: auth, plan, budget, rate limits, cache, routing, accounting.

Every Redis-backed step fails open (the cache always; rate limits unless a
deployment says closed), so an outage of Redis is never an outage of the
gateway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import weakref
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from backends.contract.errors import GatewayError, InvalidRequest
from backends.contract.protocol import ChatCompletionRequest, SamplingFields
from backends.contract.responses import split_frames
from gateway import metrics, tokens, tracing
from gateway.accounting import Reservation, settle
from gateway.auth import Principal, auth_enabled, authenticate_and_fetch, authorize_model, remembered_tier
from gateway.cache import CacheDirectives, ResponseCache, cache_control, cache_key, is_deterministic, response_cache
from gateway.cache_stream import StreamAssembler, replay
from gateway.disconnect import unless_disconnected
from gateway.keys import MISSING, KeyStore, key_store
from gateway.observe import RequestRecord
from gateway.observe import finish as finish_record
from gateway.ratelimit import LimitResult, LimitSpec, RateLimiter, rate_limiter
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable
from gateway.usage import UsageStore, usage_store
from routing.config import GatewayConfig
from routing.plan import Plan, make_plan
from routing.router import Outcome, Router
from routing.runtime import Route, Runtime

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Services:
    link: RedisLink
    keys: KeyStore
    limiter: RateLimiter
    cache: ResponseCache
    usage: UsageStore
    router: Router

    @classmethod
    def build(cls, config: GatewayConfig, redis_url: str | None) -> "Services":
        link = RedisLink(redis_url, config.redis.timeout_s, config.redis.prefix)
        p = config.redis.prefix
        # The link's client has socket timeouts and no retries, which bound every call already;
        # a second, asyncio-level deadline per call would only cost time on the hot path.
        return cls(link=link, keys=key_store(link.client, p),
                   limiter=rate_limiter(link.client, p, timeout_s=None),
                   cache=response_cache(link.client, p, max_entries=config.cache.max_entries, timeout_s=None),
                   usage=usage_store(link.client, p), router=Router(hooks=tracing.AttemptSpans()))


def namespace(route: Route) -> str:
    """Cache entries belong to a route *and* its deployments: change those and old answers no longer match."""
    cached = _namespaces.get(route)
    if cached is None:
        spec = [(d.name, d.config.provider, d.config.model, d.config.params) for d in route.deployments]
        cached = route.name + ":" + hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
        _namespaces[route] = cached
    return cached


_namespaces: "weakref.WeakKeyDictionary[Route, str]" = weakref.WeakKeyDictionary()  # routes are rebuilt on reload


def _tenant(headers: Any) -> str:
    """Whose cache entries: a hash of the caller's bearer token, known before the key is looked up (so the
    entry can still be read in the same Redis round trip as the key); "-" without one, and for everyone
    when there are no keys (every caller is then the same anonymous tenant)."""
    if not auth_enabled():
        return "-"
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "-"
    return hashlib.sha256(token.strip().encode()).hexdigest()[:16]


@dataclass
class _CacheLookup:
    """What the cache needs to know about a request: its Cache-Control directives and key (None: bypass)."""

    directives: CacheDirectives
    key: str | None

    @classmethod
    def prepare(cls, runtime: Runtime, plan: Plan, body: SamplingFields, chat: bool,
                headers: Any) -> "_CacheLookup":
        try:
            directives = cache_control(headers)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="x-gateway-cache-ttl") from None
        route_cache = plan.route.config.cache
        if directives.ttl_s is not None and directives.ttl_s > route_cache.max_client_ttl_s:
            directives = dataclasses.replace(directives, ttl_s=route_cache.max_client_ttl_s)
        if not (runtime.config.cache.enabled and route_cache.enabled and not directives.no_store):
            return cls(directives, None)
        wire = body.wire_body()
        if not (route_cache.sampled or is_deterministic(wire)):
            return cls(directives, None)
        space = namespace(plan.route)
        if route_cache.scope == "key":
            space += ":" + _tenant(headers)
        return cls(directives, cache_key(space, "chat" if chat else "completions", wire))

    def redis_key(self, cache: ResponseCache) -> str | None:
        return cache.redis_key(self.key) if self.key is not None and cache.redis is not None else None


async def serve(request: Request, body: SamplingFields, chat: bool, rec: RequestRecord) -> Response:
    started = rec.started
    app = request.app
    svc: Services = app.state.services
    runtime = app.state.manager.current  # this request finishes on this config, whatever reloads happen
    # Plan and cache key come first, on the caller's tier as last seen, so that the cache entry can be
    # read in the same Redis round trip as the API key. Their errors wait until the caller is known.
    guessed_tier = remembered_tier(request.headers, svc.keys)
    early: GatewayError | None = None
    plan = lookup = None
    try:
        plan = make_plan(runtime, body, request.headers, guessed_tier)
        lookup = _CacheLookup.prepare(runtime, plan, body, chat, request.headers)
    except GatewayError as exc:
        early = exc
    prefetch = lookup.redis_key(svc.cache) if lookup is not None else None
    principal, fetched = await authenticate_and_fetch(request.headers, svc.keys, svc.link, prefetch)
    rec.key_alias = principal.alias
    if early is not None:
        raise early
    assert plan is not None and lookup is not None
    if principal.tier != guessed_tier:  # a guess that missed: plan again; the prefetched entry may not apply
        replanned = make_plan(runtime, body, request.headers, principal.tier)
        if replanned.route is not plan.route:
            lookup = _CacheLookup.prepare(runtime, replanned, body, chat, request.headers)
            fetched = MISSING
        plan = replanned
    rec.route = plan.route.name
    authorize_model(principal, plan.route.name, body.model)
    headers: dict[str, str] = {}
    if runtime.config.logging.log_prompts:
        rec.prompt = body.wire_body().get("messages" if chat else "prompt")

    try:
        await _check_budget(principal, svc)
        o200k = runtime.config.usage.o200k_path
        reservation = await _limit(principal, plan, body, lambda: _estimate_prompt(plan, body, o200k),
                                   runtime.config.usage.default_max_tokens, svc, headers)
        # Counting tokens costs time: only when a limit needs it, else only if the backend reports no usage.
        prompt_estimate = reservation.prompt_tokens if reservation else 0
    except GatewayError as exc:
        if exc.status_code == 429:
            metrics.RATE_LIMITED.labels(plan.route.name, exc.code or "rate_limit").inc()
        raise

    directives, key, route_cache = lookup.directives, lookup.key, plan.route.config.cache
    stale = None
    if key is not None:
        entry = None
        try:
            entry = svc.cache.decode(fetched) if fetched is not MISSING else await svc.cache.get(key)
        except StoreUnavailable as exc:
            svc.link.record_error(exc)
        if entry is not None and entry.fresh and not directives.no_cache:
            headers["x-gateway-cache"] = rec.cache = "hit"
            await settle(usage=None, fallback_completion=0, prompt_estimate=0, reservation=reservation,
                         principal=principal, route=plan.route.name, deployment=None, limiter=svc.limiter,
                         store=svc.usage, link=svc.link)
            return _cached(entry.body, body, chat, headers, rec)
        stale = entry
    headers["x-gateway-cache"] = rec.cache = "miss" if key is not None else "bypass"

    upstream_request = body.with_usage_reported() if body.stream and not body.include_usage else body
    work = svc.router.run(plan, upstream_request, request.state.request_id, stream=body.stream, chat=chat)
    try:
        outcome: Outcome = await (work if body.stream else unless_disconnected(request, work))
    except GatewayError as exc:
        if exc.retryable and stale is not None:
            return _stale(stale.body, body, chat, headers, rec)
        raise
    if outcome.degraded and stale is not None:
        return _stale(stale.body, body, chat, headers, rec)
    deployment = runtime.deployments.get(outcome.deployment)
    rec.deployment, rec.attempts, rec.retries = outcome.deployment, outcome.attempts, len(outcome.errors)
    for failed in outcome.errors:
        metrics.RETRIES.labels(plan.route.name, failed.split(":", 1)[0]).inc()
    if outcome.errors and not outcome.degraded:
        metrics.FAILOVERS.labels(plan.route.name).inc()
    rec.overhead_s = max(0.0, time.monotonic() - started - outcome.backend_wait_s)
    ttl = directives.ttl_s or route_cache.ttl_s

    async def finish(result: dict[str, Any] | None, completion_frames: int) -> None:
        usage = (result or {}).get("usage")
        estimate = prompt_estimate or (0 if usage else _estimate_prompt(plan, body, o200k))
        if key is not None and result is not None and not outcome.degraded:
            try:
                await svc.cache.put(key, result, ttl_s=ttl, stale_grace_s=route_cache.stale_grace_s,
                                    max_entry_bytes=route_cache.max_entry_bytes)
            except StoreUnavailable as exc:
                svc.link.record_error(exc)
        rec.prompt_tokens, rec.completion_tokens = await settle(
            usage=usage, fallback_completion=completion_frames, prompt_estimate=estimate,
            reservation=reservation, principal=principal, route=plan.route.name,
            deployment=None if outcome.degraded else deployment, limiter=svc.limiter, store=svc.usage, link=svc.link,
            served_by="last-resort" if outcome.degraded else None)
        if rec.prompt is not None and result:
            rec.completion = _text_of(result)

    headers.update(_gateway_headers(outcome, rec.overhead_s))
    if outcome.stream is not None:
        rec.deferred = True
        stream = _account_stream(outcome.stream, finish, not body.include_usage, rec)
        return StreamingResponse(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    rec.ttft_s = time.monotonic() - started
    raw = outcome.body
    result = orjson.loads(raw) if isinstance(raw, (bytes, bytearray)) else raw
    await finish(result if isinstance(result, dict) and result.get("choices") else None, 0)
    return Response(raw if isinstance(raw, (bytes, bytearray)) else orjson.dumps(raw), media_type="application/json",
                    headers=headers)


async def _account_stream(stream: AsyncIterator[bytes], finish, strip_usage: bool,
                          rec: RequestRecord) -> AsyncIterator[bytes]:
    """Relay frames; assemble the answer for the cache and for usage; settle even if the client leaves."""
    assembler = StreamAssembler()
    frames = 0
    try:
        async for chunk in stream:  # one or more frames (see backends.base.SSEStream)
            assembler.feed(chunk)
            frames += chunk.count(b"\n\n")
            if rec.ttft_s is None:
                rec.ttft_s = time.monotonic() - rec.started
            if strip_usage and b'"choices":[]' in chunk and b'"usage":{' in chunk:
                chunk = b"".join(f for f in split_frames(chunk) if not _usage_only(f))
                if not chunk:
                    continue
            yield chunk
    finally:
        try:
            await finish(assembler.result(), max(0, frames - 2))
        finally:
            finish_record(rec)


def _usage_only(frame: bytes) -> bool:
    """The usage chunk we asked the backend for on behalf of a client that did not."""
    return frame.startswith(b'data: {') and b'"choices":[]' in frame and b'"usage":{' in frame


def _estimate_prompt(plan: Plan, body: SamplingFields, o200k: str | None) -> int:
    first = plan.candidates[0] if plan.candidates else None
    if first is not None:
        exact = first.backend.estimate_tokens(body)
        if exact is not None:
            return exact
    model = first.config.model if first else None
    if isinstance(body, ChatCompletionRequest):
        return tokens.estimate_chat(body.wire_body().get("messages") or [], model, o200k)
    return tokens.estimate_prompt(body.wire_body().get("prompt") or "", model, o200k)


async def _check_budget(principal: Principal, svc: Services) -> None:
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


async def _limit(principal: Principal, plan: Plan, body: SamplingFields, estimate: Callable[[], int],
                 default_max: int, svc: Services, headers: dict[str, str]) -> Reservation | None:
    subjects: list[tuple[str, LimitSpec]] = []
    if principal.key and (principal.key.rpm or principal.key.tpm):
        subjects.append((f"key:{principal.key.id}", LimitSpec(principal.key.rpm, principal.key.tpm)))
    rl = plan.route.config.rate_limit
    if rl.rpm or rl.tpm:
        subjects.append((f"route:{plan.route.name}", LimitSpec(rl.rpm, rl.tpm)))
    if not subjects:
        return None
    prompt_estimate = estimate()
    reserve = prompt_estimate + (getattr(body, "max_output_tokens", None) or default_max) * body.n
    granted: list[tuple[str, LimitSpec]] = []
    for subject, spec in subjects:
        try:
            result = await svc.limiter.acquire(subject, spec, reserve)
        except StoreUnavailable as exc:
            svc.link.record_error(exc)
            _fail_closed_deployments(plan)
            continue
        headers.update(result.headers())
        if not result.allowed:
            for done_subject, done_spec in granted:  # give back what the other subject reserved
                if done_spec.tpm:
                    await _quiet(svc.limiter.adjust(done_subject, done_spec, -reserve))
            raise _rate_limited(result, subject, headers)
        granted.append((subject, spec))
    return Reservation(granted, reserve, prompt_estimate)


def _fail_closed_deployments(plan: Plan) -> None:
    """Redis is down: deployments whose limits fail closed are off the plan; none left is a 503."""
    keep = [d for d in plan.candidates if d.config.rate_limit_failure == "open"]
    if not keep:
        raise GatewayError("Rate limits cannot be checked right now; please retry shortly.", status_code=503,
                           error_type="service_unavailable_error", code="rate_limiter_unavailable",
                           headers={"Retry-After": "1"})
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


def _text_of(result: dict[str, Any]) -> str:
    choice = (result.get("choices") or [{}])[0]
    return (choice.get("message") or {}).get("content") or choice.get("text") or ""


def _cached(stored: dict[str, Any], body: SamplingFields, chat: bool, headers: dict[str, str],
            rec: RequestRecord) -> Response:
    rec.overhead_s = rec.ttft_s = time.monotonic() - rec.started
    rec.deployment = "cache"
    headers["x-gateway-overhead-ms"] = f"{rec.overhead_s * 1000:.2f}"
    headers["x-gateway-deployment"] = "cache"
    headers["x-gateway-attempts"] = "0"
    if body.stream:
        return StreamingResponse(replay(stored, chat=chat, include_usage=body.include_usage),
                                 media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    return Response(orjson.dumps(stored), media_type="application/json", headers=headers)


def _stale(stored: dict[str, Any], body: SamplingFields, chat: bool, headers: dict[str, str],
           rec: RequestRecord) -> Response:
    headers["x-gateway-cache"] = "hit"
    headers["x-gateway-degraded"] = "stale-cache"
    rec.cache = "stale"
    return _cached(stored, body, chat, headers, rec)


def _gateway_headers(outcome: Outcome, overhead_s: float) -> dict[str, str]:
    headers = {
        "x-gateway-deployment": outcome.deployment,
        "x-gateway-attempts": str(outcome.attempts),
        "x-gateway-overhead-ms": f"{overhead_s * 1000:.2f}",
    }
    if outcome.degraded:
        headers["x-gateway-degraded"] = outcome.degraded
    return headers
