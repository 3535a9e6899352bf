"""Run one request through a plan: retries, breakers, failover, continuation, the last resort.

The client should not notice a failing backend. Before the first byte of an
answer, any retryable failure moves on to the next deployment (with backoff
when a deployment is tried again). After a stream has started, a break is
continued on the next deployment that can continue a message, or the stream
ends with an in-band error and `[DONE]`: a truncated stream is never passed
off as complete.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Protocol

import orjson

from backends.aio import within
from backends.base import Body, CallContext, SSEStream
from backends.contract import responses as fmt
from backends.contract.errors import AllDeploymentsFailed, GatewayError, UpstreamTimeout, internal_error
from backends.contract.protocol import ChatCompletionRequest, SamplingFields
from routing.deployment import Deployment
from routing.last_resort import degraded_body, degraded_stream
from routing.plan import Plan

log = logging.getLogger("llm_gateway.routing")


@dataclass
class Outcome:
    """What the HTTP layer needs to answer: a body or a stream, and the headers' facts."""

    body: Body | None = None
    stream: SSEStream | None = None
    deployment: str = "-"
    attempts: int = 0
    backend_wait_s: float = 0.0  # time spent waiting on backends before the answer started
    degraded: str | None = None
    errors: list[str] = field(default_factory=list)


Call = Callable[[Deployment, CallContext], Awaitable[Any]]


class AttemptHooks(Protocol):
    """Told of every attempt on a deployment (the gateway's tracing spans); routing knows no tracer."""

    def start(self, deployment: str, attempt: int) -> Any:
        """Called before the attempt; what it returns is handed back to `end`."""

    def end(self, token: Any, error: str | None) -> None:
        """Called once the attempt answered (`error` None) or failed (its code)."""


class Router:
    def __init__(self, rng: random.Random | None = None, hooks: AttemptHooks | None = None) -> None:
        self._rng = rng or random.Random()
        self._hooks = hooks

    async def run(self, plan: Plan, request: SamplingFields, request_id: str, *, stream: bool, chat: bool) -> Outcome:
        route = plan.route.config
        deadline = time.monotonic() + route.timeouts.total_s

        def call(dep: Deployment, ctx: CallContext) -> Awaitable[Any]:
            b = dep.backend
            if chat:
                return b.chat_stream(request, ctx) if stream else b.chat(request, ctx)  # type: ignore[arg-type]
            return b.completion_stream(request, ctx) if stream else b.completion(request, ctx)  # type: ignore[arg-type]

        outcome = Outcome()
        try:
            result, dep = await self._attempts(plan, request_id, deadline, call, outcome, exclude=set())
        except GatewayError as exc:
            if not exc.retryable or route.last_resort is None:
                raise
            return self._degraded(plan, request, stream, chat, outcome, exc)
        outcome.deployment = dep.name
        if not stream:
            outcome.body = result
            return outcome
        can_continue = (chat and route.stream_continuation and isinstance(request, ChatCompletionRequest)
                        and request.n == 1)
        outcome.stream = self._guard(result, dep, plan, request, request_id, deadline, outcome, can_continue)
        return outcome

    async def _attempts(self, plan: Plan, request_id: str, deadline: float, call: Call, outcome: Outcome,
                        exclude: set[str], continuation: bool = False,
                        params: dict[str, Any] | None = None, continue_from: str | None = None) -> tuple[Any, Deployment]:
        """Try deployments in plan order until one answers (its first byte, for streams)."""
        route = plan.route.config
        policy = route.retry
        candidates = [d for d in plan.candidates if d.name not in exclude
                      and (not continuation or d.backend.supports_continuation)]
        tries: dict[str, int] = {}
        last: GatewayError | None = None
        index = 0
        while outcome.attempts < policy.max_attempts and candidates:
            dep = self._next(candidates, index)
            if dep is None:
                break
            index = candidates.index(dep) + 1
            n_before = tries.get(dep.name, 0)
            if n_before:
                delay = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (n_before - 1))
                delay *= 0.5 + self._rng.random() / 2  # jitter
                if last is not None and last.retry_after:
                    delay = max(delay, min(last.retry_after, policy.retry_after_cap_s))
                if time.monotonic() + delay >= deadline:
                    dep.breaker.release()
                    break
                await asyncio.sleep(delay)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                dep.breaker.release()
                break
            tries[dep.name] = n_before + 1
            outcome.attempts += 1
            ctx = CallContext(request_id=request_id, connect_timeout=min(route.timeouts.connect_s, remaining),
                              read_timeout=min(route.timeouts.read_s, remaining),
                              params={**dep.config.params, **(params or {})}, continue_from=continue_from)
            dep.in_flight += 1
            started = time.monotonic()
            token = self._hooks.start(dep.name, outcome.attempts) if self._hooks else None
            error: str | None = None
            try:
                result = await within(call(dep, ctx), remaining)
            except asyncio.TimeoutError:
                last = UpstreamTimeout(f"The request did not finish within the route's deadline "
                                       f"({route.timeouts.total_s:g}s).")
                error = "timeout"
                self._failed(dep, last, outcome)
                continue
            except GatewayError as exc:
                error = exc.code or exc.error_type
                if not exc.retryable:
                    dep.breaker.release()  # a client error says nothing about the deployment's health
                    raise
                last = exc
                self._failed(dep, exc, outcome)
                continue
            except asyncio.CancelledError:
                error = "cancelled"
                dep.breaker.release()
                raise
            except Exception:
                # A bug of ours, or a library error a backend did not map: a 500 for this request alone,
                # never a verdict on the deployment. (Were it one, a hostile body could open the breaker
                # for every tenant.) Only transport failures, timeouts and upstream 5xx/429 count.
                log.exception("request %s: deployment %s raised unexpectedly", request_id, dep.name)
                error = "internal_error"
                dep.breaker.release()
                raise internal_error() from None
            finally:
                dep.in_flight -= 1
                outcome.backend_wait_s += time.monotonic() - started
                if self._hooks:
                    self._hooks.end(token, error)
            dep.breaker.record_success()
            dep.successes += 1
            dep.observe_ttft(time.monotonic() - started)
            return result, dep
        if last is None:
            last = AllDeploymentsFailed(f"No deployment of '{plan.route.name}' is available right now.",
                                        headers={"Retry-After": "1"})
            last.retryable = True
        raise last

    def _next(self, candidates: list[Deployment], start: int) -> Deployment | None:
        """The next deployment, cycling from `start`, whose breaker lets a request through."""
        n = len(candidates)
        for k in range(n):
            dep = candidates[(start + k) % n]
            if dep.breaker.allow():
                return dep
        return None

    @staticmethod
    def _failed(dep: Deployment, exc: GatewayError, outcome: Outcome) -> None:
        if exc.counts_against_breaker:
            dep.breaker.record_failure()
        else:
            dep.breaker.release()
        dep.failures += 1
        dep.last_error = f"{exc.status_code} {exc.code or exc.error_type}"
        outcome.errors.append(f"{dep.name}: {dep.last_error}")
        log.warning("deployment %s failed (%s); failing over", dep.name, dep.last_error)

    def _degraded(self, plan: Plan, request: SamplingFields, stream: bool, chat: bool, outcome: Outcome,
                  exc: GatewayError) -> Outcome:
        message = plan.route.config.last_resort.message  # type: ignore[union-attr]
        outcome.degraded = "static"
        outcome.deployment = "last-resort"
        log.error("route %s: every deployment failed (%s); answering with the last resort",
                  plan.route.name, "; ".join(outcome.errors) or exc.message)
        if stream:
            outcome.stream = degraded_stream(plan.route.name, message, chat, request.include_usage)
        else:
            outcome.body = degraded_body(plan.route.name, message, chat)
        return outcome

    async def _guard(self, stream: SSEStream, dep: Deployment, plan: Plan, request: SamplingFields,
                     request_id: str, deadline: float, outcome: Outcome, can_continue: bool) -> AsyncIterator[bytes]:
        """Relay a started stream; on a break, continue elsewhere or end with an in-band error + [DONE]."""
        tracker = _ChatTracker() if can_continue else None
        rewrite: _ChatTracker | None = None
        failed = {dep.name}
        current = stream
        single = getattr(request, "n", 1) == 1
        finished = False  # a finish_reason was relayed (cheap byte check; exact for n == 1)
        try:
            while True:
                try:
                    async for chunk in current:
                        if tracker is not None:  # (rewrite is only ever the tracker)
                            chunk = _follow(chunk, tracker, rewrite)
                            if not chunk:
                                continue
                        if single and not finished and (_FINISH in chunk or _FINISH_SPACED in chunk):
                            finished = True
                        yield chunk
                    return
                except Exception as exc:
                    if not isinstance(exc, GatewayError):  # a bug: this stream's error, not the deployment's
                        log.exception("request %s: the stream from %s raised unexpectedly", request_id, dep.name)
                        yield fmt.error_frame(internal_error().body())
                        yield fmt.DONE
                        return
                    self._failed(dep, exc, outcome)
                    if finished:
                        # The answer was complete (its finish_reason arrived); only the tail broke off.
                        # Like OpenAI's own interrupted streams, the usage chunk may then be missing.
                        log.warning("stream from %s broke after its finish_reason; ending it cleanly", dep.name)
                        yield fmt.DONE
                        return
                    nxt = None
                    if tracker is not None and not tracker.finished:
                        nxt = await self._continue(plan, request, request_id, deadline, outcome, failed, tracker)
                    if nxt is None:
                        yield fmt.error_frame(exc.body())
                        yield fmt.DONE
                        return
                    await _close(current)
                    current, dep = nxt
                    failed.add(dep.name)
                    rewrite = tracker
                    outcome.deployment = dep.name
        finally:
            await _close(current)

    async def _continue(self, plan: Plan, request: SamplingFields, request_id: str, deadline: float,
                        outcome: Outcome, failed: set[str], tracker: "_ChatTracker") -> tuple[SSEStream, Deployment] | None:
        params: dict[str, Any] = {}
        asked = getattr(request, "max_output_tokens", None)
        if asked is not None:  # the continuation may only use what the broken stream left over
            field_name = "max_completion_tokens" if getattr(request, "max_completion_tokens", None) else "max_tokens"
            params[field_name] = max(1, asked - tracker.frames)

        def call(dep: Deployment, ctx: CallContext) -> Awaitable[Any]:
            return dep.backend.chat_stream(request, ctx)  # type: ignore[arg-type]

        try:
            stream, dep = await self._attempts(plan, request_id, deadline, call, outcome, exclude=failed,
                                               continuation=True, params=params, continue_from=tracker.text)
        except GatewayError:
            return None
        log.info("continued a broken stream on %s after %d characters", dep.name, len(tracker.text))
        return stream, dep


def _follow(chunk: bytes, tracker: "_ChatTracker", rewrite: "_ChatTracker | None") -> bytes:
    """Feed a chunk's frames to the tracker, rewritten first when they come from a continuation."""
    kept: list[bytes] = []
    for frame in fmt.split_frames(chunk):
        if rewrite is not None:
            frame = rewrite.rewrite(frame)  # type: ignore[assignment]
            if frame is None:
                continue
        tracker.observe(frame)
        kept.append(frame)
    return b"".join(kept)


class _ChatTracker:
    """Follows a chat stream's text, and rewrites a continuation's frames to look like the original's."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.frames = 0
        self.finished = False
        self.head: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def observe(self, frame: bytes) -> None:
        chunk = _chunk(frame)
        if chunk is None:
            return
        if self.head is None:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                self.parts.append(content)
                self.frames += 1
            if choice.get("finish_reason"):
                self.finished = True

    def rewrite(self, frame: bytes) -> bytes | None:
        """Drop the continuation's role chunk; give its chunks the original id, created and model."""
        chunk = _chunk(frame)
        if chunk is None:
            return frame
        choices = chunk.get("choices") or []
        for choice in choices:
            delta = choice.get("delta") or {}
            delta.pop("role", None)
            if (len(choices) == 1 and not delta.get("content") and not delta.get("tool_calls")
                    and not choice.get("finish_reason")):
                return None
        if self.head:
            chunk.update({k: v for k, v in self.head.items() if v is not None})
        return fmt.sse(chunk)


_FINISH = b'"finish_reason":"'
_FINISH_SPACED = b'"finish_reason": "'


def _chunk(frame: bytes) -> dict[str, Any] | None:
    if not frame.startswith(b"data: {"):
        return None
    try:
        return orjson.loads(frame[6:])
    except orjson.JSONDecodeError:
        return None


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken upstream must not mask the real outcome
            pass
