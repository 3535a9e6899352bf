"""Stream deadlines in-process: the config fields, what counts as the first content, and the router's timers
on a scripted backend (tenths of a second; the process tests in test_stream_deadlines.py use real sims)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backends.base import Backend
from backends.contract.errors import GatewayError
from backends.contract.protocol import ChatCompletionRequest
from routing.breaker import CircuitBreaker
from routing.config import BreakerConfig, DeploymentConfig, RouteConfig
from routing.deployment import Deployment
from routing.plan import Plan
from routing.prompt_tokens import PromptTokens
from routing.relay import has_content
from routing.router import Router
from routing.runtime import Route

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
TEXT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
DONE = b"data: [DONE]\n\n"


def test_stream_deadlines_are_optional_per_route_and_per_deployment() -> None:
    route = RouteConfig(name="r", deployments=["a"], timeouts={"first_token_s": 1.5, "idle_s": 2})
    assert (route.timeouts.first_token_s, route.timeouts.idle_s, route.timeouts.read_s) == (1.5, 2.0, 60.0)
    assert RouteConfig(name="r", deployments=["a"]).timeouts.first_token_s is None
    own = DeploymentConfig(name="a", provider="p", model="m", timeouts={"idle_s": 9})
    assert (own.timeouts.first_token_s, own.timeouts.idle_s) == (None, 9.0)
    with pytest.raises(ValueError):
        RouteConfig(name="r", deployments=["a"], timeouts={"first_token_s": 0})
    with pytest.raises(ValueError, match="read_s"):  # a deployment sets only its stream deadlines
        DeploymentConfig(name="a", provider="p", model="m", timeouts={"read_s": 9})


@pytest.mark.parametrize("chunk, content", [
    (ROLE, False), (b": keep-alive\n\n", False), (TEXT, True), (ROLE + TEXT, True), (FINISH, True), (DONE, True),
    (b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}\n\n', True),
    (b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hm"}}]}\n\n', True),
    (b'data: {"choices":[{"index":0,"text":"hi","finish_reason":null}]}\n\n', True),
    (b'data: {"choices":[{"index":0,"text":"","finish_reason":null}]}\n\n', False),
], ids=["role", "comment", "text", "role+text", "finish", "done", "tool", "reasoning", "completion", "empty-text"])
def test_what_counts_as_the_first_content(chunk: bytes, content: bool) -> None:
    assert has_content(chunk) is content


class Scripted(Backend):
    """Streams `script`: bytes are sent, floats are pauses (seconds)."""

    kind = "scripted"
    supports_continuation = True

    def __init__(self, name: str, script: list[Any]) -> None:
        super().__init__(name, None)
        self.script = script
        self.calls = 0

    async def chat_stream(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls += 1

        async def frames():  # type: ignore[no-untyped-def]
            for step in self.script:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    yield step
        it = frames()
        first = await it.__anext__()  # like the HTTP backends: return once the first frame exists

        async def rest():  # type: ignore[no-untyped-def]
            yield first
            async for x in it:
                yield x
        return rest()

    async def start(self): ...
    async def aclose(self): ...
    def status(self): ...
    async def chat(self, request, ctx): ...
    async def completion(self, request, ctx): ...
    async def completion_stream(self, request, ctx): ...


def run(route_timeouts: dict, first: Scripted, second: Scripted, continuation: bool = True) -> tuple[bytes, float]:
    deps = [Deployment(DeploymentConfig(name=b.name, provider="p", model="m"), b, CircuitBreaker(BreakerConfig()))
            for b in (first, second)]
    route = Route(RouteConfig(name="r", deployments=[first.name, second.name], stream_continuation=continuation,
                              timeouts=route_timeouts, retry={"max_attempts": 3, "backoff_base_s": 0}), deps)
    request = ChatCompletionRequest.model_validate({"model": "r", "stream": True,
                                                    "messages": [{"role": "user", "content": "x"}]})

    async def go() -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await Router().run(Plan(route, deps, PromptTokens(request), 1), request, "rid")
        return b"".join([c async for c in outcome.stream]), loop.time() - started  # type: ignore[union-attr]
    return asyncio.run(go())


def test_a_late_first_token_fails_over_and_an_unset_deadline_waits() -> None:
    late, quick = [ROLE, 0.5, TEXT, FINISH, DONE], [ROLE, TEXT, FINISH, DONE]
    body, took = run({"first_token_s": 0.1}, Scripted("slow", late), fine := Scripted("fine", quick))
    assert body.count(b"role") == 1 and fine.calls == 1 and took < 0.4
    body, took = run({}, Scripted("slow", late), fine := Scripted("fine", quick))
    assert fine.calls == 0 and took >= 0.5 and body.endswith(DONE) and b"error" not in body


def test_an_idle_stall_after_content_ends_in_band_without_continuation() -> None:
    stall = [ROLE, TEXT, 5.0, FINISH, DONE]
    body, took = run({"idle_s": 0.1}, Scripted("stall", stall), other := Scripted("o", [ROLE, TEXT, DONE]),
                     continuation=False)
    assert b'"code":"stream_idle_timeout"' in body and body.endswith(DONE) and took < 1.0 and other.calls == 0


def test_total_s_ends_a_started_stream() -> None:
    drip = [ROLE] + [0.05, TEXT] * 40 + [FINISH, DONE]
    body, took = run({"total_s": 0.5}, Scripted("drip", drip), other := Scripted("o", [ROLE, TEXT, DONE]))
    assert b'"code":"timeout"' in body and body.endswith(DONE) and 0.45 < took < 1.2 and other.calls == 0


def test_a_first_token_miss_is_a_retryable_504() -> None:
    from backends.contract.errors import FirstTokenTimeout, StreamIdleTimeout
    for cls, code in ((FirstTokenTimeout, "first_token_timeout"), (StreamIdleTimeout, "stream_idle_timeout")):
        err: GatewayError = cls("x")
        assert (err.status_code, err.code, err.retryable, err.counts_against_breaker) == (504, code, True, True)
