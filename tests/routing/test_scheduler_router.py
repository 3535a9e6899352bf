"""The router with schedulers, in-process on gated backends: a slot is held for the whole answer (a stream
to its last chunk) and given back exactly once on every path (an error, a cancel, a client that stops
reading or never starts, a continuation elsewhere); a full deployment is skipped for interactive requests
and waited for by batch ones; a wait that runs out is a 503 and no verdict on the deployment."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from backends.base import Backend
from backends.contract import priority
from backends.contract.errors import UpstreamUnavailable
from backends.contract.priority import Priority, Scheduling
from backends.contract.protocol import ChatCompletionRequest
from routing.breaker import CircuitBreaker
from routing.config import BreakerConfig, DeploymentConfig, RouteConfig
from routing.deployment import Deployment
from routing.outcome import Outcome
from routing.plan import Plan
from routing.prompt_tokens import PromptTokens
from routing.router import Router
from routing.runtime import Route
from routing.scheduler import QueueFull

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
TEXT = b'data: {"choices":[{"index":0,"delta":{"content":"hi "},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"
BODY = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
                                                                                      "content": "hi"}}]}


class Gated(Backend):
    """Answers once `gate` is open; a stream sends its first text at once and the rest once `more` is set.
    `fail` makes every call fail (retryably); `cut` breaks a stream after its first text."""

    kind = "gated"
    supports_continuation = True

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.gate = asyncio.Event()
        self.gate.set()
        self.more = asyncio.Event()
        self.more.set()
        self.fail = False
        self.cut = False
        self.calls = 0

    async def chat(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise UpstreamUnavailable("down")
        return BODY

    async def chat_stream(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise UpstreamUnavailable("down")

        async def frames():  # type: ignore[no-untyped-def]
            yield ROLE + TEXT
            await self.more.wait()
            if self.cut:
                raise UpstreamUnavailable("cut")
            yield TEXT + FINISH + DONE
        return frames()

    async def start(self): ...
    async def aclose(self): ...
    def status(self): ...
    async def completion(self, request, ctx): ...
    async def completion_stream(self, request, ctx): ...


def deployment(name: str, capacity: int | None = 1, **own: Any) -> Deployment:
    return Deployment(DeploymentConfig(name=name, provider="p", model="m", max_concurrency=capacity, **own),
                      Gated(name), CircuitBreaker(BreakerConfig()))


def request(stream: bool) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "r", "stream": stream,
                                                 "messages": [{"role": "user", "content": "x"}]})


async def run(deps: list[Deployment], stream: bool = False, p: Priority = Priority.INTERACTIVE,
              tenant: str = "t", queue_s: float = 5.0) -> Outcome:
    route = Route(RouteConfig(name="r", deployments=[d.name for d in deps],
                              timeouts={"queue_s": queue_s, "total_s": 10},
                              retry={"max_attempts": 3, "backoff_base_s": 0}), deps)
    priority.current.set(Scheduling(p, tenant))
    req = request(stream)
    return await Router().run(Plan(route, deps, PromptTokens(req), 1), req, "rid")


def busy(dep: Deployment) -> int:
    return sum(dep.scheduler.snapshot()["in_service"].values())


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_stream_holds_its_slot_to_its_last_chunk() -> None:
    a = deployment("a")
    a.backend.more.clear()  # type: ignore[attr-defined]
    outcome = await run([a], stream=True)
    first = await outcome.stream.__anext__()  # type: ignore[union-attr]
    assert b"hi" in first and busy(a) == 1
    waiting = asyncio.ensure_future(run([a]))
    await settle()
    assert not waiting.done(), "the second request waits for the stream's slot"
    a.backend.more.set()  # type: ignore[attr-defined]
    rest = [c async for c in outcome.stream]  # type: ignore[union-attr]
    assert rest[-1].endswith(DONE)
    assert (await waiting).body == BODY and busy(a) == 0


async def test_the_slot_is_given_back_after_an_error_and_a_cancel() -> None:
    a = deployment("a")
    a.backend.fail = True  # type: ignore[attr-defined]
    with pytest.raises(UpstreamUnavailable):
        await run([a])
    assert busy(a) == 0 and a.backend.calls == 3  # type: ignore[attr-defined]
    a.backend.fail = False  # type: ignore[attr-defined]
    a.backend.gate.clear()  # type: ignore[attr-defined]
    hung = asyncio.ensure_future(run([a]))
    waiter = asyncio.ensure_future(run([a]))
    await settle()
    assert busy(a) == 1 and a.scheduler.snapshot()["waiting"]["interactive"] == 1
    waiter.cancel()  # a client that went away while waiting leaves the queue
    hung.cancel()  # ... and one that went away while being answered gives its slot back
    await asyncio.gather(hung, waiter, return_exceptions=True)
    assert busy(a) == 0 and a.scheduler.snapshot()["waiting"]["interactive"] == 0
    assert a.breaker.state == "closed"


async def test_a_client_that_stops_reading_or_never_starts_gives_the_slot_back() -> None:
    a = deployment("a", capacity=3)
    a.backend.more.clear()  # type: ignore[attr-defined]
    stopped = await run([a], stream=True)
    await stopped.stream.__anext__()  # type: ignore[union-attr]
    await stopped.stream.aclose()  # type: ignore[union-attr]  # Starlette closes it when the client goes
    assert busy(a) == 0
    never = await run([a], stream=True)
    assert busy(a) == 1
    never.release_slot()  # what the gateway does once the response is over (gateway/answer.py)
    never.release_slot()
    assert busy(a) == 0
    dropped = await run([a], stream=True)
    assert busy(a) == 1
    del dropped  # a path that forgot it: the finalizer gives it back
    gc.collect()
    await settle()
    assert busy(a) == 0 and a.scheduler.dropped == 1


async def test_a_continuation_gives_back_the_broken_leg_s_slot_and_holds_its_own() -> None:
    a, b = deployment("a"), deployment("b")
    a.backend.more.clear()  # type: ignore[attr-defined]
    a.backend.cut = True  # type: ignore[attr-defined]
    b.backend.more.clear()  # type: ignore[attr-defined]
    outcome = await run([a, b], stream=True)
    await outcome.stream.__anext__()  # type: ignore[union-attr]
    assert (busy(a), busy(b)) == (1, 0)
    other = b.scheduler.try_acquire(Scheduling(Priority.INTERACTIVE, "other"))  # b is full for now
    a.backend.more.set()  # type: ignore[attr-defined]  # a breaks; b is to continue, once it has room
    nxt = asyncio.ensure_future(outcome.stream.__anext__())  # type: ignore[union-attr]
    await settle()
    assert busy(a) == 0, "the broken leg's slot is free while the continuation waits for its own"
    assert b.scheduler.snapshot()["waiting"]["interactive"] == 1
    other.release()  # type: ignore[union-attr]
    await settle()
    assert (busy(a), busy(b)) == (0, 1)
    b.backend.more.set()  # type: ignore[attr-defined]
    await nxt
    [c async for c in outcome.stream]  # type: ignore[union-attr]
    assert (busy(a), busy(b)) == (0, 0) and outcome.deployment == "b"


async def test_interactive_skips_a_full_deployment_and_batch_waits_for_it() -> None:
    a, b = deployment("a"), deployment("b", capacity=None)
    held = a.scheduler.try_acquire(Scheduling(Priority.INTERACTIVE, "other"))
    outcome = await run([a, b])
    assert outcome.deployment == "b" and b.backend.calls == 1 and outcome.queue_wait_s == 0  # type: ignore[attr-defined]
    assert a.breaker.state == "closed" and a.backend.calls == 0  # type: ignore[attr-defined]
    line = asyncio.ensure_future(run([a, b], p=Priority.BATCH))
    await settle()
    assert not line.done() and a.scheduler.snapshot()["waiting"]["batch"] == 1
    held.release()  # type: ignore[union-attr]
    assert (await line).deployment == "a"


async def test_a_wait_that_runs_out_moves_on_and_is_a_503_when_nothing_is_left() -> None:
    a, b = deployment("a"), deployment("b")
    a_held = a.scheduler.try_acquire(Scheduling(Priority.INTERACTIVE, "other"))
    b_held = b.scheduler.try_acquire(Scheduling(Priority.INTERACTIVE, "other"))
    with pytest.raises(QueueFull) as err:
        await run([a, b], p=Priority.NEAR_REAL_TIME, queue_s=0.05)
    assert err.value.status_code == 503 and err.value.code == "model_overloaded"
    assert a.scheduler.refused["timeout"] == 1 and b.scheduler.refused["timeout"] == 1
    assert a.failures == 0 and a.breaker.state == "closed" and a.backend.calls == 0  # type: ignore[attr-defined]
    a_held.release()  # type: ignore[union-attr]
    b_held.release()  # type: ignore[union-attr]
