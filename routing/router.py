"""Run one request through a plan: retries, breakers, failover, continuation, the last resort.

The client should not notice a failing backend. Before the first byte of an
answer, a retryable failure is retried on the same deployment up to the route's
`retry_same` times, then moves on to the next deployment (with backoff whenever
a deployment is tried again); a prompt too long for a deployment's context goes
on to a larger one (routing/attempt_order.py). After a stream has started, a break is
continued on the next deployment that can continue a message, or the stream
ends with an in-band error and `[DONE]`: a truncated stream is never passed
off as complete. Each deployment continues in its own ways (`continuation` in its config): a prefill
of the text so far, else a restart whose answer is spliced on (routing/splice.py); a refused way
moves on to the next way, then to the next deployment.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, AsyncIterator, Callable, Protocol

from backends.aio import within
from backends.base import CallContext, SSEStream
from backends.contract import priority
from backends.contract import responses as fmt
from backends.contract.errors import (
    AllDeploymentsFailed,
    FirstTokenTimeout,
    GatewayError,
    UpstreamTimeout,
    internal_error,
)
from backends.contract.priority import Priority
from backends.contract.protocol import ChatCompletionRequest, SamplingFields
from backends.contract.responses import split_frames
from routing.attempt_order import AttemptOrder, outgrown, wait_before
from routing.continuation import CONTINUE_INSTRUCTION, continuation_ways, refused
from routing.deployment import Deployment
from routing.last_resort import degraded_body, degraded_stream
from routing.outcome import Leg, Outcome
from routing.plan import Plan
from routing.quota import Quotas, QuotaStore
from routing.relay import assembled, close_stream, fed, idle_timeout, rewritten, to_first_content
from routing.scheduler import NO_SLOT, QueueFull, Slot
from routing.splice import Diverged, Splice

log = logging.getLogger("llm_gateway.routing")
# A read timeout set to the time left fires at the deadline or a timer tick after it.
CALLERS_DEADLINE_SLACK_S = 0.05


class AttemptHooks(Protocol):
    """Told of every attempt on a deployment (the gateway's tracing spans); routing knows no tracer."""

    def start(self, deployment: str, attempt: int) -> Any:
        """Called before the attempt; what it returns is handed back to `end`."""

    def end(self, token: Any, error: str | None) -> None:
        """Called once the attempt answered (`error` None) or failed (its code)."""


QueueHook = Callable[[str, Priority, float, "str | None"], None]  # deployment, class, seconds waited, refusal reason


class Router:
    """Stateless between requests (breakers, latencies and schedulers live on the deployments): each
    request gets a `_Run` of its own. `on_wait` is told of every wait for a deployment's slot (metrics);
    `quotas` counts deployments' `rpm`/`tpm` caps (routing/quota.py; None: no caps are enforced)."""

    def __init__(self, rng: random.Random | None = None, hooks: AttemptHooks | None = None,
                 on_wait: QueueHook | None = None, quotas: QuotaStore | None = None) -> None:
        self._rng = rng or random.Random()
        self._hooks = hooks
        self._on_wait = on_wait
        self._quotas = quotas

    async def run(self, plan: Plan, request: SamplingFields, request_id: str,
                  outcome: Outcome | None = None) -> Outcome:
        """Answer `request` (its endpoint and streaming mode are its own) from the plan's deployments.
        Pass `outcome` to see its attempts and errors even when this raises."""
        return await _Run(self, plan, request, request_id, outcome).start()


class _Run:
    """One request's way through its plan: the state every stage needs, kept in one place."""

    def __init__(self, router: Router, plan: Plan, request: SamplingFields, request_id: str,
                 outcome: Outcome | None = None) -> None:
        self.rng = router._rng
        self.hooks = router._hooks
        self.on_wait = router._on_wait
        self.plan = plan
        self.route = plan.route.config
        self.request = request
        self.request_id = request_id
        self.outcome = outcome if outcome is not None else Outcome()
        # A wait before routing (the key's concurrency limit) counts against the route's deadline too.
        self.deadline = time.monotonic() + self.route.timeouts.total_s - self.outcome.queue_wait_s
        # A caller's own deadline (a gRPC one) that comes sooner bounds retries and failover as well.
        self.callers = self.outcome.caller_deadline is not None and self.outcome.caller_deadline < self.deadline
        if self.callers:
            self.deadline = self.outcome.caller_deadline  # type: ignore[assignment]
        self.scheduling = priority.current.get()  # set at admission for this request's task
        self.failed: set[str] = set()  # deployments whose stream broke (never asked to continue it)
        self.quotas = Quotas(router._quotas, request, plan.tokens, plan.max_tokens, plan.route.name)
        self.ways: dict[str, list[str]] = {}  # a continuation's ways left per deployment, the next one first

    async def start(self) -> Outcome:
        outcome = self.outcome
        try:
            result, dep = await self.attempts()
        except GatewayError as exc:
            if not exc.retryable or self.route.last_resort is None or self.request.endpoint == "embeddings":
                raise
            return self.degraded(exc)
        outcome.deployment, outcome.served_by = dep.name, dep
        if not self.request.stream:
            outcome.body = result
            return outcome
        outcome.stream = self.relay(result, dep)
        return outcome

    @property
    def can_continue(self) -> bool:
        """May a broken stream be continued elsewhere? Chat only, one choice, and the route allows it."""
        return (self.request.is_chat and self.route.stream_continuation
                and isinstance(self.request, ChatCompletionRequest) and self.request.n == 1)

    # -- attempts before the first byte ------------------------------------------------------------------

    async def attempts(self, continuation: bool = False, params: dict[str, Any] | None = None,
                       continue_from: str | None = None) -> tuple[Any, Deployment]:
        """Try deployments until one answers (its first byte, for streams), in `AttemptOrder`'s order:
        the same one up to `retry_same` more times, then the next; a context too small skips ahead.

        A continuation tries each deployment's ways (`self.ways`) in turn: `continue_from` and `params`
        go with a prefill, a restart asks the original request; a way refused (a 4xx) gives the next."""
        policy = self.route.retry
        outcome = self.outcome
        if continuation:
            self.ways = {d.name: continuation_ways(d) for d in self.plan.candidates}
        order = AttemptOrder([d for d in self.plan.candidates if d.name not in self.failed
                              and (not continuation or self.ways[d.name])], policy.retry_same)
        tries: dict[str, int] = {}
        ready_at: dict[str, float] = {}  # when a deployment that failed may be asked again
        last: GatewayError | None = None
        again: Deployment | None = None  # a deployment whose continuation way was refused, to try its next way
        while outcome.attempts < policy.max_attempts:
            dep = again if again is not None and again.breaker.allow() else order.next(last)
            again = None
            if dep is None:
                break
            wait = ready_at.get(dep.name, 0.0) - time.monotonic()
            if wait > 0 and time.monotonic() + wait >= self.deadline:
                dep.breaker.release()  # its wait does not fit: move on, never to come back
                order.drop(dep)
                continue
            if wait > 0:
                await asyncio.sleep(wait)
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                dep.breaker.release()
                break
            try:
                dep, slot = await self.slot(dep, order, remaining, ready_at)
            except QueueFull as exc:  # busy, not broken: on to the next deployment, never back to this one
                self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code} (queue {exc.reason})")
                order.drop(dep)
                last = exc
                continue
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:  # the wait took the rest of the deadline: no verdict on the deployment
                slot.release()
                dep.breaker.release()
                break
            capped = await self.within_caps(dep, slot)
            if capped is not None:  # at its rpm/tpm cap: on to the next deployment, never back to this one
                self.outcome.errors.append(f"{dep.name}: {capped.status_code} {capped.code} (cap)")
                order.drop(dep)
                last = capped
                continue
            tries[dep.name] = tries.get(dep.name, 0) + 1
            outcome.attempts += 1
            way = self.ways[dep.name][0] if continuation else None
            prefill = way == "prefill"
            ctx = CallContext(request_id=self.request_id, connect_timeout=min(self.route.timeouts.connect_s, remaining),
                              read_timeout=min(self.route.timeouts.read_s, remaining),
                              params={**dep.config.params, **((params or {}) if way != "restart" else {})},
                              continue_from=continue_from if prefill else None)
            try:
                result = await self.attempt(dep, ctx, remaining, self.request_for(way, continue_from))
            except BaseException as exc:
                slot.release()
                await self.quotas.failed(exc)
                if not isinstance(exc, GatewayError):
                    raise
                if outgrown(exc):
                    self.outgrown(dep, exc, order)
                elif continuation and refused(exc):
                    again = self.refused(dep, exc, order)
                elif not exc.retryable:
                    raise
                else:
                    ready_at[dep.name] = time.monotonic() + wait_before(policy, tries[dep.name], exc.retry_after,
                                                                        self.rng)
                last = exc
                continue
            self.quotas.answered()
            if self.request.stream:
                self.hold(slot)  # until the stream's last chunk (relay), which settles the caps' tokens too
            else:
                slot.release()  # the whole answer is in
                await self.quotas.settle_body(result)
            return result, dep
        if last is None:
            last = AllDeploymentsFailed(f"No deployment of '{self.plan.route.name}' is available right now.",
                                        headers={"Retry-After": "1"})
        raise last

    # -- capacity ---------------------------------------------------------------------------------------

    async def slot(self, dep: Deployment, order: AttemptOrder, remaining: float,
                   ready_at: dict[str, float]) -> tuple[Deployment, Slot]:
        """A slot of `dep` (claimed from its breaker already), or of the next deployment with one free now
        when `dep` is full and the request is interactive; else wait for `dep`'s, up to the route's
        `queue_s` (batch: its whole deadline). QueueFull when none came; the breaker claim is given back."""
        sched = self.scheduling
        scheduler = dep.scheduler
        if not scheduler.limited:
            return dep, NO_SLOT
        slot = scheduler.try_acquire(sched)
        if slot is not None:
            return dep, slot
        if sched.priority == Priority.INTERACTIVE:
            now = time.monotonic()
            other = order.instead_of(dep, lambda d: d.scheduler.has_room(sched) and ready_at.get(d.name, 0.0) <= now)
            if other is not None:
                dep.breaker.release()
                log.debug("request %s: %s is full; %s has room", self.request_id, dep.name, other.name)
                return other, other.scheduler.try_acquire(sched) or NO_SLOT
        limit = remaining if sched.priority == Priority.BATCH else min(remaining, self.route.timeouts.queue_s)
        started = time.monotonic()
        refusal: str | None = None
        try:
            slot = await scheduler.acquire(sched, limit)
        except QueueFull as exc:
            refusal = exc.reason
            dep.breaker.release()
            raise
        except BaseException:
            refusal = "left"
            dep.breaker.release()
            raise
        finally:
            waited = time.monotonic() - started
            self.outcome.queue_wait_s += waited
            if self.on_wait is not None:
                self.on_wait(dep.name, sched.priority, waited, refusal)
        return dep, slot

    async def within_caps(self, dep: Deployment, slot: Slot) -> GatewayError | None:
        """None: `dep` is within its rpm/tpm caps, and this attempt is counted against them. Else the
        refusal, with the slot and the breaker's claim given back (no verdict on a deployment at its cap)."""
        try:
            refusal = await self.quotas.take(dep)
        except BaseException:
            slot.release()
            dep.breaker.release()
            raise
        if refusal is not None:
            slot.release()
            dep.breaker.release()
        return refusal

    def hold(self, slot: Slot) -> None:
        """The slot of the deployment streaming now, released when its leg ends (`release_slot`)."""
        self.outcome.release_slot()
        self.outcome.slot = slot

    def refused(self, dep: Deployment, exc: GatewayError, order: AttemptOrder) -> Deployment | None:
        """`dep` refused a way of continuing (its breaker was left alone): `dep` again for its next way,
        or None when it has none left (then never again in this request)."""
        way = self.ways[dep.name].pop(0)
        self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code or exc.error_type} ({way} refused)")
        log.info("request %s: %s refused to continue by %s (%s)", self.request_id, dep.name, way, exc.message)
        if self.ways[dep.name]:
            return dep
        order.drop(dep)
        return None

    def outgrown(self, dep: Deployment, exc: GatewayError, order: AttemptOrder) -> None:
        """The prompt did not fit `dep`'s context: go on to a larger one (its breaker was left alone)."""
        order.outgrow(dep)
        self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code}")
        log.info("request %s: the prompt is too long for %s (context %s); trying %s", self.request_id, dep.name,
                 dep.context_length, ", ".join(d.name for d in order.left()) or "no larger deployment")

    def request_for(self, way: str | None, continue_from: str | None) -> SamplingFields:
        """What a continuation asks: the original request (a prefill's text goes in its context; a restart
        asks for the whole answer again), or, to continue by instruction, the conversation with the text so
        far as the assistant's turn and a user turn asking it to go on from there."""
        if way != "instruction" or not continue_from or not isinstance(self.request, ChatCompletionRequest):
            return self.request
        return self.request.with_messages_appended([{"role": "assistant", "content": continue_from},
                                                    {"role": "user", "content": CONTINUE_INSTRUCTION}])

    async def attempt(self, dep: Deployment, ctx: CallContext, remaining: float,
                      request: SamplingFields | None = None) -> Any:
        """One call to one deployment, with its breaker, counters and hooks kept right whatever happens."""
        dep.in_flight += 1
        started = time.monotonic()
        token = self.hooks.start(dep.name, self.outcome.attempts) if self.hooks else None
        error: str | None = None
        first_token_s, idle_s = self.stream_deadlines(dep)
        limit = remaining if first_token_s is None else min(remaining, first_token_s)
        try:
            result = await within(self.opened(dep, ctx, first_token_s, idle_s, request or self.request), limit)
        except asyncio.TimeoutError:
            exc = self.overdue() if limit == remaining else FirstTokenTimeout(
                f"The deployment '{dep.name}' sent no content within {first_token_s:g}s (first_token_s).")
            error = exc.code
            self.failed_on(dep, exc)
            raise exc from None
        except GatewayError as exc:
            error = exc.code or exc.error_type
            if not exc.retryable:
                dep.breaker.release()  # a client error says nothing about the deployment's health
                raise
            self.failed_on(dep, exc)
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            dep.breaker.release()
            raise
        except Exception:
            # A bug of ours, or a library error a backend did not map: a 500 for this request alone,
            # never a verdict on the deployment. (Were it one, a hostile body could open the breaker
            # for every tenant.) Only transport failures, timeouts and upstream 5xx/429 count.
            log.exception("request %s: deployment %s raised unexpectedly", self.request_id, dep.name)
            error = "internal_error"
            dep.breaker.release()
            raise internal_error() from None
        finally:
            dep.in_flight -= 1
            self.outcome.backend_wait_s += time.monotonic() - started
            if self.hooks:
                self.hooks.end(token, error)
        dep.breaker.record_success()
        dep.successes += 1
        dep.observe_ttft(time.monotonic() - started)
        return result

    def stream_deadlines(self, dep: Deployment) -> tuple[float | None, float | None]:
        """`first_token_s` and `idle_s` for a stream on `dep` (its own values override the route's);
        None, None for a plain answer, whose content is the whole answer (read_s and total_s bound it)."""
        if not self.request.stream:
            return None, None
        own, route = dep.config.timeouts, self.route.timeouts
        return _own_or_route(own.first_token_s, route.first_token_s), _own_or_route(own.idle_s, route.idle_s)

    async def opened(self, dep: Deployment, ctx: CallContext, first_token_s: float | None,
                     idle_s: float | None, request: SamplingFields) -> Any:
        """The backend's answer. With a stream deadline set, a stream is read up to its first content
        before it counts as started: a miss until then fails over before any byte reached the client."""
        result = await dep.backend.answer(request, ctx)  # type: ignore[arg-type]
        if first_token_s is None and idle_s is None:
            return result
        return await to_first_content(result, idle_s)

    def callers_time_up(self, exc: GatewayError) -> bool:
        """A timeout that came when the caller's own deadline (a gRPC one, sooner than the route's) was up:
        the attempt was cut by the caller's limit, which says nothing about the deployment's health (a
        tenant sending tiny deadlines must not open a breaker the others share)."""
        return (self.callers and isinstance(exc, UpstreamTimeout)
                and time.monotonic() >= self.deadline - CALLERS_DEADLINE_SLACK_S)

    def overdue(self, cls: type[UpstreamTimeout] = UpstreamTimeout) -> UpstreamTimeout:
        if self.callers:
            return cls("The request did not finish within the caller's deadline.", code="deadline_exceeded")
        return cls(f"The request did not finish within the route's deadline ({self.route.timeouts.total_s:g}s).")

    async def next_chunk(self, stream: SSEStream, idle_s: float | None) -> bytes:
        """The stream's next chunk within `idle_s` and the route's deadline (`_Overdue` past the latter), on
        one timer and no task. `relay` reads inline instead when no deadline could be missed first."""
        remaining = self.deadline - time.monotonic()
        if idle_s is None or remaining <= idle_s:
            if remaining <= 0:
                raise self.overdue(_Overdue)
            try:
                return await within(stream.__anext__(), remaining)
            except asyncio.TimeoutError:
                raise self.overdue(_Overdue) from None
        try:
            return await within(stream.__anext__(), idle_s)
        except asyncio.TimeoutError:
            raise idle_timeout(idle_s) from None

    def failed_on(self, dep: Deployment, exc: GatewayError) -> None:
        if self.callers_time_up(exc):  # a caller may set any deadline: its expiry is no fault of the deployment
            dep.breaker.release()
            self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code} (caller's deadline)")
            return
        if exc.counts_against_breaker:
            dep.breaker.record_failure()
        else:
            dep.breaker.release()
        dep.failures += 1
        dep.last_error = f"{exc.status_code} {exc.code or exc.error_type}"
        self.outcome.errors.append(f"{dep.name}: {dep.last_error}")
        log.warning("deployment %s failed (%s); failing over", dep.name, dep.last_error)

    # -- the last resort ---------------------------------------------------------------------------------

    def degraded(self, exc: GatewayError) -> Outcome:
        outcome, request = self.outcome, self.request
        message = self.route.last_resort.message  # type: ignore[union-attr]
        outcome.degraded = "static"
        outcome.deployment = "last-resort"
        log.error("route %s: every deployment failed (%s); answering with the last resort",
                  self.plan.route.name, "; ".join(outcome.errors) or exc.message)
        if request.stream:
            outcome.stream = assembled(degraded_stream(self.plan.route.name, message, request), outcome.assembler)
        else:
            outcome.body = degraded_body(self.plan.route.name, message, request)
        return outcome

    # -- after the first byte ----------------------------------------------------------------------------

    async def relay(self, stream: SSEStream, dep: Deployment) -> AsyncIterator[bytes]:
        """Relay a started stream; on a break, continue elsewhere or end with an in-band error + [DONE].

        Every frame goes through the outcome's assembler once. Frames of a continuation are rewritten
        to look like the original stream's (its id, no second role chunk)."""
        asm = self.outcome.assembler
        self.failed.add(dep.name)
        current = stream
        rewriting = False
        splice: Splice | None = None  # set while a restarted answer is spliced on
        leg_start = (0, 0)  # (content frames, characters) relayed when the current leg began
        try:
            while True:
                idle_s = self.stream_deadlines(dep)[1]
                read_s = self.route.timeouts.read_s
                try:
                    while True:
                        try:
                            if idle_s is None and self.deadline - time.monotonic() > read_s:
                                # The usual case, inline and without a timer (~5 µs a chunk): the deadline is
                                # further away than the backend's own read timeout, which cuts a stall first.
                                chunk = await current.__anext__()
                            else:
                                chunk = await self.next_chunk(current, idle_s)
                        except StopAsyncIteration:
                            if splice is not None:
                                splice.end()
                            break
                        if rewriting:
                            chunk = rewritten(chunk, asm, self.outcome.legs, splice)
                            if not chunk:
                                continue
                        else:
                            for frame in split_frames(chunk):
                                asm.feed(frame)
                        yield chunk
                    return
                except Exception as exc:
                    if isinstance(exc, Diverged):  # the restarted answer is another answer: nothing to splice on
                        log.warning("request %s: %s", self.request_id, exc.message)
                        self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code} (restart diverged)")
                        self.outcome.stream_error = exc
                        yield fed(fmt.error_frame(exc.body()), asm)
                        yield fed(fmt.DONE, asm)
                        return
                    if not isinstance(exc, GatewayError):  # a bug: this stream's error, not the deployment's
                        log.exception("request %s: the stream from %s raised unexpectedly", self.request_id, dep.name)
                        self.outcome.stream_error = internal_error()
                        yield fed(fmt.error_frame(self.outcome.stream_error.body()), asm)
                        yield fed(fmt.DONE, asm)
                        return
                    overdue = isinstance(exc, _Overdue)  # the route's time is up: no continuation, no verdict
                    if overdue:
                        self.outcome.errors.append(f"{dep.name}: {exc.status_code} {exc.code}")
                        log.warning("request %s: the stream from %s ran past the route's deadline",
                                    self.request_id, dep.name)
                    else:
                        self.failed_on(dep, exc)
                    self.outcome.release_slot()  # the broken leg serves no more; a continuation takes its own
                    if asm.all_finished:
                        # The answer was complete (its finish_reason arrived); only the tail broke off.
                        # Like OpenAI's own interrupted streams, the usage chunk may then be missing.
                        log.warning("stream from %s broke after its finish_reason; ending it cleanly", dep.name)
                        yield fed(fmt.DONE, asm)
                        return
                    nxt = await self.continuation() if self.can_continue and not overdue else None
                    if nxt is None:
                        self.outcome.stream_error = exc
                        yield fed(fmt.error_frame(exc.body()), asm)
                        yield fed(fmt.DONE, asm)
                        return
                    await close_stream(current)
                    self.outcome.legs.append(self.leg_of(dep, leg_start, splice))
                    leg_start = (asm.content_frames, len(asm.text))
                    current, dep = nxt
                    self.failed.add(dep.name)
                    rewriting = True
                    splice = Splice(asm.text) if self.ways[dep.name][0] == "restart" else None
                    self.outcome.deployment, self.outcome.served_by = dep.name, dep
        finally:
            self.outcome.release_slot()
            try:
                await close_stream(current)
            finally:
                await self.quotas.settle_stream(asm.usage, asm.content_frames, self.outcome.legs, dep)

    def leg_of(self, dep: Deployment, start: tuple[int, int], splice: Splice | None = None) -> Leg:
        """The leg `dep` served, from `start` to now. Its prompt: the request's, plus what was relayed
        before it began (a prefill's prompt holds that text; about 4 characters a token). A restarted
        leg's prompt is the request's alone, and its output includes the repeated text it generated."""
        frames, chars = start
        asm = self.outcome.assembler
        if splice is not None:
            return Leg(dep, self.plan.tokens.counted(), asm.content_frames - frames + splice.swallowed)
        return Leg(dep, self.plan.tokens.counted() + chars // 4, asm.content_frames - frames)

    async def continuation(self) -> tuple[SSEStream, Deployment] | None:
        """A stream that goes on from the text relayed so far, on a deployment that has not failed."""
        asm = self.outcome.assembler
        params: dict[str, Any] = {}
        asked = self.request.max_output_tokens
        if asked is not None:  # the continuation may only use what the broken stream left over
            field_name = "max_completion_tokens" if getattr(self.request, "max_completion_tokens", None) else "max_tokens"
            params[field_name] = max(1, asked - asm.content_frames)
        try:
            stream, dep = await self.attempts(continuation=True, params=params, continue_from=asm.text)
        except GatewayError:
            return None
        log.info("continued a broken stream on %s (%s) after %d characters", dep.name, self.ways[dep.name][0],
                 len(asm.text))
        return stream, dep


def _own_or_route(own: float | None, route: float | None) -> float | None:
    """A deadline of the deployment's own overrides the route's."""
    return route if own is None else own


class _Overdue(UpstreamTimeout):
    """A started stream ran past the route's `total_s`: ended in-band, never continued, no breaker verdict."""


