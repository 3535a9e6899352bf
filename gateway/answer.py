"""The answer: a routed outcome, a cache hit or a stale entry turned into the HTTP response, and the
request settled (cache write, usage, spend, the TPM correction) once the answer is complete.

A streamed answer is settled when its stream ends, however it ends (the client may leave): the
router's assembler already holds everything the settlement needs, so no frame is parsed here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Mapping

import orjson
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from backends.contract.protocol import SamplingFields
from backends.contract.responses import split_frames
from gateway import metrics
from gateway.accounting import settle
from gateway.admission import Admission
from gateway.cache_replay import replay
from gateway.observe import RequestRecord
from gateway.observe import finish as finish_record
from gateway.services import Services
from gateway.store_errors import StoreUnavailable
from routing.outcome import Outcome

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def answer(svc: Services, admitted: Admission, body: SamplingFields, outcome: Outcome,
                 rec: RequestRecord) -> Response:
    """The response for a routed outcome; a stream settles as it ends, a body before it is sent."""
    plan = admitted.plan
    rec.deployment, rec.attempts, rec.retries = outcome.deployment, outcome.attempts, len(outcome.errors)
    rec.queue_wait_s = outcome.queue_wait_s
    _count_failures(plan.route.name, outcome.errors, failover=bool(outcome.errors) and not outcome.degraded)
    # The gateway's own time: neither the backends' nor the wait for capacity.
    rec.overhead_s = max(0.0, time.monotonic() - rec.started - outcome.backend_wait_s - outcome.queue_wait_s)
    headers = {**admitted.headers, **_gateway_headers(outcome, rec.overhead_s)}
    settlement = Settlement(svc, admitted, outcome, rec)
    if outcome.stream is not None:
        rec.deferred = True
        stream = _settled_stream(outcome, settlement, not body.include_usage, rec, len(outcome.errors))
        return StreamingResponse(stream, media_type="text/event-stream", headers={**SSE_HEADERS, **headers},
                                 background=BackgroundTask(_response_over, outcome, rec, settlement))
    rec.ttft_s = time.monotonic() - rec.started
    raw = outcome.body
    result = orjson.loads(raw) if isinstance(raw, (bytes, bytearray)) else raw
    await settlement.run(result if isinstance(result, dict) and result.get(body.result_field) else None)
    return Response(raw if isinstance(raw, (bytes, bytearray)) else orjson.dumps(raw), media_type="application/json",
                    headers=headers)


class Settlement:
    """What happens once an answer is complete: the cache write, then usage, spend and the TPM correction."""

    def __init__(self, svc: Services, admitted: Admission, outcome: Outcome, rec: RequestRecord) -> None:
        self.svc, self.admitted, self.outcome, self.rec = svc, admitted, outcome, rec
        self.streaming = False  # a stream's generator started (its `finally` will settle)

    async def run(self, result: dict[str, Any] | None, completion_frames: int = 0) -> None:
        svc, admitted, outcome, rec = self.svc, self.admitted, self.outcome, self.rec
        plan, key = admitted.plan, admitted.lookup.key
        usage = (result or {}).get("usage")
        if key is not None and result is not None and not outcome.degraded:
            route_cache = plan.route.config.cache
            try:
                await svc.cache.put(key, result, ttl_s=admitted.lookup.directives.ttl_s or route_cache.ttl_s,
                                    stale_grace_s=route_cache.stale_grace_s, max_entry_bytes=route_cache.max_entry_bytes)
            except StoreUnavailable as exc:
                svc.link.record_error(exc)
        # The prompt's count, only when needed: the answer reported none (or a limit counted it already).
        counted = not outcome.degraded and (admitted.reservation is not None or not usage)
        def count(prompt: int, completion: int) -> None:  # before the settlement awaits: a cut stream's too
            rec.prompt_tokens, rec.completion_tokens = prompt, completion

        await settle(
            usage=usage, fallback_completion=completion_frames,
            prompt_estimate=plan.tokens.counted() if counted else 0, reservation=admitted.reservation,
            principal=admitted.principal, route=plan.route.name,
            deployment=None if outcome.degraded else outcome.served_by, limiter=svc.limiter, store=svc.usage,
            link=svc.link, served_by="last-resort" if outcome.degraded else None, earlier=outcome.legs,
            tier=rec.tier, counted=count)
        if rec.prompt is not None and result:
            rec.completion = _text_of(result)


def _count_failures(route: str, errors: list[str], failover: bool) -> None:
    """Every failed attempt by its deployment ("name: status code"), and a failover when there was one."""
    for failed in errors:
        metrics.RETRIES.labels(route, failed.split(":", 1)[0]).inc()
    if failover:
        metrics.FAILOVERS.labels(route).inc()


async def _settled_stream(outcome: Outcome, settlement: Settlement, strip_usage: bool,
                          rec: RequestRecord, counted: int) -> AsyncIterator[bytes]:
    """Relay frames; settle from the router's assembler even if the client leaves."""
    assert outcome.stream is not None
    settlement.streaming = True
    try:
        async for chunk in outcome.stream:  # one or more frames (see backends.base.SSEStream)
            if rec.ttft_s is None:
                rec.ttft_s = time.monotonic() - rec.started
            if strip_usage and b'"choices":[]' in chunk and b'"usage":{' in chunk:
                chunk = b"".join(f for f in split_frames(chunk) if not _usage_only(f))
                if not chunk:
                    continue
            yield chunk
    except (GeneratorExit, asyncio.CancelledError):  # closed before its end: the client left mid-stream
        if not outcome.assembler.done and outcome.stream_error is None:
            rec.status, rec.error_code = 499, "client_disconnected"
        raise
    finally:
        outcome.release_slot()  # at once, whatever awaits below: the relay may be left suspended by a disconnect
        try:
            asm = outcome.assembler
            # The deployment that finished it, and every attempt (a continuation's included).
            rec.deployment, rec.attempts, rec.retries = outcome.deployment, outcome.attempts, len(outcome.errors)
            rec.queue_wait_s = outcome.queue_wait_s
            # Failures after the stream started (a break, a continuation refused) count as those before it did.
            later = outcome.errors[counted:]
            _count_failures(rec.route, later, failover=bool(outcome.legs) and not counted)
            if outcome.stream_error is not None:  # a stream that ended with an in-band error is not a 200
                rec.status = outcome.stream_error.status_code
                rec.error_code = outcome.stream_error.code or outcome.stream_error.error_type
            await settlement.run(asm.result(), asm.content_frames)
        finally:
            finish_record(rec)


async def _response_over(outcome: Outcome, rec: RequestRecord, settlement: Settlement) -> None:
    """Once the streamed response is over, however it went, its deployment slot and concurrency places are
    given back, even when its client left while a chunk was being sent (the stream's `finally` then waits
    for the generator to be closed) or before the stream was started at all (a generator never started
    runs no `finally`: that request is finished here). A coroutine, so that Starlette runs it on the event
    loop: a plain function would run in a worker thread, where waking a waiter's future is not safe."""
    outcome.release_slot()
    rec.release_holds()
    if not settlement.streaming and not rec.done:
        rec.status, rec.error_code = 499, "client_disconnected"
        finish_record(rec)


def _usage_only(frame: bytes) -> bool:
    """The usage chunk we asked the backend for on behalf of a client that did not."""
    return frame.startswith(b'data: {') and b'"choices":[]' in frame and b'"usage":{' in frame


def _text_of(result: dict[str, Any]) -> str:
    choice = (result.get("choices") or [{}])[0]
    return (choice.get("message") or {}).get("content") or choice.get("text") or ""


def cached_response(stored: dict[str, Any], body: SamplingFields, headers: Mapping[str, str],
                    rec: RequestRecord) -> Response:
    """A cache hit, as a body or replayed as a stream."""
    rec.overhead_s = rec.ttft_s = time.monotonic() - rec.started
    rec.deployment = "cache"
    headers = {**headers, "x-gateway-overhead-ms": f"{rec.overhead_s * 1000:.2f}",
               "x-gateway-deployment": "cache", "x-gateway-attempts": "0"}
    if body.stream:
        return StreamingResponse(replay(stored, body),
                                 media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
    return Response(orjson.dumps(stored), media_type="application/json", headers=headers)


def stale_response(stored: dict[str, Any], body: SamplingFields, headers: Mapping[str, str],
                   rec: RequestRecord) -> Response:
    """Every deployment failed, but an expired entry is still within its grace: better than an error."""
    rec.cache = "stale"
    return cached_response(stored, body, {**headers, "x-gateway-cache": "hit", "x-gateway-degraded": "stale-cache"},
                           rec)


def _gateway_headers(outcome: Outcome, overhead_s: float) -> dict[str, str]:
    headers = {
        "x-gateway-deployment": outcome.deployment,
        "x-gateway-attempts": str(outcome.attempts),
        "x-gateway-overhead-ms": f"{overhead_s * 1000:.2f}",
    }
    if outcome.degraded:
        headers["x-gateway-degraded"] = outcome.degraded
    return headers
