"""One request, front to back, as a short chain of named stages:

    serve -> admit (caller, plan, budget, limits)
          -> look_up (the response cache)
          -> route (the router: retries, failover, continuation, the last resort)
          -> answer (the HTTP response; the settlement once the answer is complete)

Each stage takes plain values (the services, the runtime, the validated body, the headers, the
request's record), never a Starlette `Request`, so each can be tested on its own. Every Redis-backed
step fails open (the cache always; rate limits unless a deployment says closed), so an outage of
Redis is never an outage of the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from starlette.responses import Response

from backends.contract import priority
from backends.contract.errors import GatewayError
from backends.contract.priority import Priority
from backends.contract.protocol import SamplingFields
from gateway import tracing
from gateway.accounting import settle
from gateway.admission import Admission, admit
from gateway.answer import answer, cached_response, stale_response
from gateway.auth import Principal
from gateway.cache import CacheEntry
from gateway.keys import MISSING
from gateway.observe import RequestRecord
from gateway.services import Services
from gateway.store_errors import StoreUnavailable
from routing.outcome import Outcome
from routing.runtime import Runtime

T = TypeVar("T")


@dataclass
class Call:
    """One API call as the pipeline sees it."""

    body: SamplingFields
    headers: Mapping[str, str]
    request_id: str
    rec: RequestRecord
    # Runs non-streaming work so that it is cancelled if the client goes away (gateway.disconnect).
    until_disconnect: Callable[[Awaitable[Any]], Awaitable[Any]]
    principal: Principal | None = None  # the caller, once admitted (the owner of what a surface stores)
    preset: Principal | None = None  # the caller, known already (a batch line runs as its batch's key)
    priority: Priority | None = None  # set by the caller (a batch line: BATCH); else decided at admission
    keep_chunks: bool = False  # a surface translates the stream: the assembler keeps its parsed chunks
    deadline: float | None = None  # the caller's own (time.monotonic), when it sent one: a gRPC deadline
    outcome: Outcome | None = None  # the router's, once routed


async def serve(svc: Services, runtime: Runtime, call: Call) -> Response:
    """`runtime` is the config this request finishes on, whatever reloads happen meanwhile."""
    tracing.join(call, runtime)  # the caller's trace context, from the headers (a gRPC call's metadata)
    admitted = await admit(svc, runtime, call.body, call.headers, call.rec, call.preset, call.priority)
    call.principal = admitted.principal
    # This request's task (and the tasks it starts: its stream's) is scheduled by this, in the router and
    # in a local engine. Each request runs in a task of its own, so the value never reaches another.
    priority.current.set(admitted.scheduling)
    if runtime.config.logging.log_prompts:
        call.rec.prompt = call.body.wire_body().get(call.body.prompt_field)
    fresh, stale = await look_up(svc, admitted, call.rec)
    if fresh is not None:
        await settle(usage=None, fallback_completion=0, prompt_estimate=0, reservation=admitted.reservation,
                     principal=admitted.principal, route=admitted.plan.route.name, deployment=None,
                     limiter=svc.limiter, store=svc.usage, link=svc.link, tier=call.rec.tier)
        return cached_response(fresh.body, call.body, admitted.headers, call.rec)
    try:
        outcome = await route(svc, admitted, call)
    except GatewayError as exc:
        if exc.retryable and stale is not None:
            return stale_response(stale.body, call.body, admitted.headers, call.rec)
        raise
    if outcome.degraded and stale is not None:
        return stale_response(stale.body, call.body, admitted.headers, call.rec)
    return await answer(svc, admitted, call.body, outcome, call.rec)


async def look_up(svc: Services, admitted: Admission, rec: RequestRecord) -> tuple[CacheEntry | None,
                                                                                    CacheEntry | None]:
    """(a fresh entry to answer with, an expired one to fall back on); the cache fails open."""
    lookup = admitted.lookup
    if lookup.key is None:
        admitted.headers["x-gateway-cache"] = rec.cache = "bypass"
        return None, None
    entry = None
    try:
        entry = (svc.cache.decode(admitted.fetched) if admitted.fetched is not MISSING
                 else await svc.cache.get(lookup.key))
    except StoreUnavailable as exc:
        svc.link.record_error(exc)
    if entry is not None and entry.fresh and not lookup.directives.no_cache:
        admitted.headers["x-gateway-cache"] = rec.cache = "hit"
        return entry, None
    admitted.headers["x-gateway-cache"] = rec.cache = "miss"
    return None, entry


async def route(svc: Services, admitted: Admission, call: Call) -> Outcome:
    """The router's outcome. A stream asks its backend for usage even when the client did not
    (the usage chunk is then taken out again), so that it can be accounted. A request that fails
    still has its attempts counted in its record."""
    body = call.body
    upstream = body.with_usage_reported() if body.stream and not body.include_usage else body
    outcome = call.outcome = Outcome(queue_wait_s=admitted.queue_wait_s, caller_deadline=call.deadline)
    outcome.assembler.keep = call.keep_chunks
    work = svc.router.run(admitted.plan, upstream, call.request_id, outcome)
    try:
        # A stream too: until its first chunk it may wait for a slot, and a client that left meanwhile
        # must leave the queue (once the stream is open, Starlette stops it on a disconnect).
        return await call.until_disconnect(work)
    except BaseException:
        call.rec.attempts, call.rec.retries = outcome.attempts, len(outcome.errors)
        call.rec.queue_wait_s = outcome.queue_wait_s
        raise
