"""The order of attempts within one request (routing/attempt_order.py), and the router walking it.

Plain objects and a scripted backend: no process, no sockets. The process tests against the simulators are
tests/routing/test_retry_same.py.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from backends.base import Backend
from backends.contract.errors import ContextLengthExceeded, GatewayError, UpstreamError, UpstreamTimeout
from backends.contract.protocol import ChatCompletionRequest
from routing.attempt_order import AttemptOrder, outgrown, wait_before
from routing.breaker import CircuitBreaker
from routing.config import BreakerConfig, DeploymentConfig, RetryPolicy, RouteConfig, Timeouts
from routing.deployment import Deployment
from routing.plan import Plan
from routing.prompt_tokens import PromptTokens
from routing.router import Router
from routing.runtime import Route

ERR_500 = UpstreamError("boom", status_code=500)
ERR_429 = UpstreamError("slow down", status_code=429, retry_after=0.3)
TIMEOUT = UpstreamTimeout("silent")
TOO_LONG = UpstreamError("This model's maximum context length is 10 tokens.", status_code=400,
                         code="context_length_exceeded")
BAD = UpstreamError("bad value", status_code=400)
OK = {"id": "x", "object": "chat.completion", "choices": []}


class Scripted(Backend):
    """Answers each call with the next item of its script (an error is raised); then OK for ever."""

    kind = "fake"

    def __init__(self, name: str, script: list[Any] | None = None) -> None:
        super().__init__(name, None)
        self.script = list(script or [])
        self.calls: list[float] = []  # when each call came

    async def chat(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls.append(time.monotonic())
        item = self.script.pop(0) if self.script else OK
        if isinstance(item, BaseException):
            raise item
        return item

    async def start(self): ...
    async def aclose(self): ...
    def status(self): ...
    async def chat_stream(self, request, ctx): ...
    async def completion(self, request, ctx): ...
    async def completion_stream(self, request, ctx): ...


def dep(name: str, context: int | None = None, script: list[Any] | None = None, threshold: int = 3) -> Deployment:
    return Deployment(DeploymentConfig(name=name, provider="p", model="m", context_length=context),
                      Scripted(name, script), CircuitBreaker(BreakerConfig(failure_threshold=threshold)))


def walk(order: AttemptOrder, errors: list[GatewayError | None]) -> list[str | None]:
    """The deployments `order` picks when each attempt fails with the next error (the first: None)."""
    picked = []
    for err in errors:
        d = order.next(err)
        picked.append(d.name if d else None)
    return picked


# -- the order on its own ----------------------------------------------------------------------------------

def test_retry_same_zero_moves_on_at_once_and_cycles() -> None:
    order = AttemptOrder([dep("a"), dep("b"), dep("c")], retry_same=0)
    assert walk(order, [None, ERR_500, ERR_500, ERR_500, ERR_500]) == ["a", "b", "c", "a", "b"]


def test_retry_same_tries_each_deployment_again_before_the_next() -> None:
    order = AttemptOrder([dep("a"), dep("b")], retry_same=1)
    assert walk(order, [None, ERR_429, ERR_500, ERR_500, ERR_500, ERR_500]) == ["a", "a", "b", "b", "a", "a"]
    order = AttemptOrder([dep("a"), dep("b")], retry_same=2)
    assert walk(order, [None, ERR_500, ERR_500, ERR_500]) == ["a", "a", "a", "b"]


def test_a_timeout_is_never_retried_on_the_same_deployment() -> None:
    order = AttemptOrder([dep("a"), dep("b")], retry_same=3)
    assert walk(order, [None, TIMEOUT, ERR_500]) == ["a", "b", "b"]
    alone = AttemptOrder([dep("a")], retry_same=3)
    assert walk(alone, [None, TIMEOUT]) == ["a", None], "not even by cycling back to itself"


def test_an_open_breaker_ends_the_retries_of_a_deployment() -> None:
    a, b = dep("a"), dep("b")
    order = AttemptOrder([a, b], retry_same=5)
    assert order.next(None) is a
    for _ in range(3):
        a.breaker.record_failure()  # threshold 3: open
    assert order.next(ERR_500) is b


def test_outgrown_drops_every_deployment_whose_context_is_no_larger() -> None:
    small, same, unknown, big = dep("small", 100), dep("same", 100), dep("unknown"), dep("big", 1000)
    order = AttemptOrder([small, same, unknown, big], retry_same=2)
    assert order.next(None) is small
    order.outgrow(small)
    assert order.next(TOO_LONG) is unknown, "an unknown context may fit; one no larger may not"
    order.outgrow(unknown)  # unknown context: drops only itself
    assert order.next(TOO_LONG) is big
    order.outgrow(big)
    assert order.next(TOO_LONG) is None
    assert outgrown(TOO_LONG) and outgrown(ContextLengthExceeded("x")) and not outgrown(BAD)


def test_wait_before_is_never_under_the_base_and_honours_retry_after_up_to_its_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=2.0, retry_after_cap_s=1.5)
    rng = random.Random(7)
    for tries in range(1, 8):
        for _ in range(50):
            w = wait_before(policy, tries, None, rng)
            assert 0.1 <= w <= min(2.0, 0.1 * 2 ** (tries - 1))
    assert wait_before(policy, 1, 1.0, rng) == 1.0
    assert wait_before(policy, 1, 30.0, rng) == 1.5, "Retry-After is capped"


# -- the router walking it ---------------------------------------------------------------------------------

REQUEST = ChatCompletionRequest.model_validate({"model": "r", "messages": [{"role": "user", "content": "x"}]})


def run(deps: list[Deployment], **retry: Any) -> tuple[Any, float]:
    """Route REQUEST through `deps` (in order); the outcome or the error raised, and the seconds it took."""
    timeouts = retry.pop("timeouts", {})
    policy = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "retry_after_cap_s": 1.0, **retry}
    route = Route(RouteConfig(name="r", deployments=[d.name for d in deps], retry=RetryPolicy(**policy),
                              timeouts=Timeouts(**timeouts)), deps)
    started = time.monotonic()
    try:
        result: Any = asyncio.run(Router(random.Random(1)).run(Plan(route, deps, PromptTokens(REQUEST), 1),
                                                               REQUEST, "rid"))
    except GatewayError as exc:
        result = exc
    return result, time.monotonic() - started


def calls(d: Deployment) -> list[float]:
    return d.backend.calls  # type: ignore[attr-defined]


def test_a_429_is_retried_on_the_primary_after_its_retry_after() -> None:
    a, b = dep("a", script=[ERR_429]), dep("b")
    outcome, _ = run([a, b], retry_same=1)
    assert outcome.deployment == "a" and outcome.attempts == 2 and not calls(b)
    gap = calls(a)[1] - calls(a)[0]
    assert gap >= 0.3, f"retried after {gap:.3f}s; Retry-After was 0.3 s"
    a, b = dep("a", script=[ERR_429]), dep("b")
    outcome, took = run([a, b], retry_same=0)
    assert outcome.deployment == "b" and took < 0.3, "retry_same 0: the fallback answers at once"


def test_retries_of_one_deployment_are_never_closer_than_the_backoff_base() -> None:
    a = dep("a", script=[ERR_500, ERR_500])
    outcome, _ = run([a], retry_same=2, backoff_base_s=0.1)
    assert outcome.deployment == "a" and outcome.attempts == 3
    gaps = [t2 - t1 for t1, t2 in zip(calls(a), calls(a)[1:])]
    assert all(g >= 0.1 for g in gaps), gaps


def test_max_attempts_bounds_the_retries() -> None:
    a, b = dep("a", script=[ERR_500] * 9, threshold=50), dep("b", script=[ERR_500] * 9, threshold=50)
    err, _ = run([a, b], retry_same=5, max_attempts=4, backoff_base_s=0.001)
    assert isinstance(err, UpstreamError) and err.status_code == 500
    assert (len(calls(a)), len(calls(b))) == (4, 0)


def test_a_retry_after_past_the_deadline_moves_on_instead_of_waiting() -> None:
    a, b = dep("a", script=[UpstreamError("later", status_code=429, retry_after=5.0)]), dep("b")
    outcome, took = run([a, b], retry_same=1, retry_after_cap_s=5.0, timeouts={"total_s": 1.0})
    assert outcome.deployment == "b" and len(calls(a)) == 1 and took < 0.5


def test_a_context_too_small_goes_to_a_larger_one_and_leaves_the_breaker_alone() -> None:
    small, same, big = dep("small", 100, [TOO_LONG]), dep("same", 100), dep("big", 1000)
    outcome, _ = run([small, same, big], retry_same=2)
    assert outcome.deployment == "big" and outcome.attempts == 2
    assert len(calls(small)) == 1 and not calls(same), "never retried, and no smaller context asked"
    assert small.breaker.snapshot()["consecutive_failures"] == 0 and small.failures == 0


def test_with_no_larger_context_left_the_client_gets_the_400() -> None:
    big, small = dep("big", 1000, [TOO_LONG]), dep("small", 100)
    err, _ = run([big, small], retry_same=2)
    assert isinstance(err, GatewayError) and err.status_code == 400 and err.code == "context_length_exceeded"
    assert len(calls(big)) == 1 and not calls(small)


def test_other_client_errors_still_go_straight_back() -> None:
    a, b = dep("a", script=[BAD]), dep("b")
    err, _ = run([a, b], retry_same=2)
    assert isinstance(err, GatewayError) and err.status_code == 400 and not calls(b)


@pytest.mark.parametrize("retry_same", [0, 2])
def test_a_silent_deployment_is_not_asked_again_in_a_row(retry_same: int) -> None:
    a, b = dep("a", script=[TIMEOUT]), dep("b")
    outcome, _ = run([a, b], retry_same=retry_same)
    assert outcome.deployment == "b" and len(calls(a)) == 1



def test_a_silent_deployment_is_not_asked_again_in_the_request_even_after_the_others() -> None:
    order = AttemptOrder([dep("a"), dep("b")], retry_same=0)
    assert walk(order, [None, TIMEOUT, ERR_500, ERR_500]) == ["a", "b", "b", "b"], "cycling skips the silent a"


class Slow(Scripted):
    async def chat(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls.append(time.monotonic())
        await asyncio.sleep(5)
        return OK


@pytest.mark.parametrize("caller_s,counted", [(0.2, False), (None, True)])
def test_a_caller_s_short_deadline_is_no_verdict_on_the_deployment(caller_s: float | None, counted: bool) -> None:
    """A tenant may send any deadline (gRPC): one too short to be met must not open a breaker the others share;
    the route's own deadline (the admin's) still counts a deployment that cannot answer within it."""
    from routing.outcome import Outcome

    slow = Deployment(DeploymentConfig(name="slow", provider="p", model="m"), Slow("slow"),
                      CircuitBreaker(BreakerConfig(failure_threshold=1)))
    route = Route(RouteConfig(name="r", deployments=["slow"], retry=RetryPolicy(max_attempts=1),
                              timeouts=Timeouts(total_s=0.3 if caller_s is None else 10)), [slow])
    deadline = None if caller_s is None else time.monotonic() + caller_s
    with pytest.raises(UpstreamTimeout):
        asyncio.run(Router(random.Random(1)).run(Plan(route, [slow], PromptTokens(REQUEST), 1), REQUEST, "rid",
                                                 Outcome(caller_deadline=deadline)))
    assert (slow.breaker.snapshot()["consecutive_failures"] == 1) is counted
    assert (slow.failures == 1) is counted
