"""Deployments' rpm/tpm caps in the router (routing/quota.py), counted by the gateway's real limiter (in this
process, and in Redis for two replicas): a deployment at its cap is skipped without a verdict on its breaker
and without a call; none left is a 429 with Retry-After; tokens are reserved up front and corrected to the
answer's usage (a body's, a stream's), given back by a failed attempt; the scheduler's max_concurrency is
claimed first, so a request that goes elsewhere for a slot spends none of the deployment's quota."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backends.base import Backend
from backends.contract import priority
from backends.contract.errors import GatewayError, UpstreamUnavailable
from backends.contract.priority import Priority, Scheduling
from backends.contract.protocol import ChatCompletionRequest
from gateway.deployment_quota import DeploymentQuotas
from gateway.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from gateway.redis_conn import RedisLink
from routing.breaker import CircuitBreaker
from routing.config import BreakerConfig, DeploymentConfig, RouteConfig
from routing.deployment import Deployment
from routing.plan import Plan
from routing.prompt_tokens import PromptTokens
from routing.quota import DeploymentCapped, QuotaUnavailable, Verdict
from routing.router import Router
from routing.runtime import Route
from tests.redis_env import fresh_redis
from tests.waiting import wait_until_async

USED = 7  # completion tokens every answer reports


def body(prompt: int) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": USED, "total_tokens": prompt + USED}}


class Upstream(Backend):
    """Answers at once with a fixed usage; `fail` makes calls fail retryably; counts its calls."""

    kind = "fake"

    def __init__(self, name: str) -> None:
        super().__init__(name, None)
        self.calls = 0
        self.fail = False

    async def chat(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.fail:
            raise UpstreamUnavailable("down")
        return body(3)

    async def chat_stream(self, request, ctx):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.fail:
            raise UpstreamUnavailable("down")

        async def frames():  # type: ignore[no-untyped-def]
            yield (b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
                   b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}\n\n')
            yield (b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,'
                   b'"completion_tokens":7,"total_tokens":10}}\n\ndata: [DONE]\n\n')
        return frames()

    async def start(self): ...
    async def aclose(self): ...
    def status(self): ...
    async def completion(self, request, ctx): ...
    async def completion_stream(self, request, ctx): ...


def dep(name: str, **own: Any) -> Deployment:
    return Deployment(DeploymentConfig(name=name, provider="p", model="m", **own), Upstream(name),
                      CircuitBreaker(BreakerConfig()))


def calls(d: Deployment) -> int:
    return d.backend.calls  # type: ignore[attr-defined]


def memory() -> DeploymentQuotas:
    return DeploymentQuotas(MemoryRateLimiter(), RedisLink(None))


async def ask(router: Router, deps: list[Deployment], *, max_tokens: int = 10, stream: bool = False,
              p: Priority = Priority.INTERACTIVE) -> Any:
    """One request through a priority route over `deps`; the body (a stream read to its end), and who answered."""
    route = Route(RouteConfig(name="r", deployments=[d.name for d in deps], timeouts={"total_s": 10},
                              retry={"max_attempts": 3, "backoff_base_s": 0}), deps)
    priority.current.set(Scheduling(p, "t"))
    req = ChatCompletionRequest.model_validate({"model": "r", "stream": stream, "max_tokens": max_tokens,
                                                "messages": [{"role": "user", "content": "x"}]})
    outcome = await router.run(Plan(route, deps, PromptTokens(req), max_tokens), req, "rid")
    if stream:
        return [c async for c in outcome.stream], outcome.deployment  # type: ignore[union-attr]
    return outcome.body, outcome.deployment


async def test_a_deployment_at_its_rpm_is_skipped_without_a_call_or_a_verdict() -> None:
    a, b = dep("a", rpm=2), dep("b")
    router = Router(quotas=memory())
    served = [(await ask(router, [a, b]))[1] for _ in range(4)]
    assert served == ["a", "a", "b", "b"]
    assert (calls(a), calls(b)) == (2, 2)
    assert a.breaker.state == "closed" and a.failures == 0


async def test_every_deployment_at_its_cap_is_a_429_with_retry_after_and_no_call() -> None:
    a, b = dep("a", rpm=1), dep("b", rpm=2)
    router = Router(quotas=memory())
    for _ in range(3):
        await ask(router, [a, b])
    with pytest.raises(DeploymentCapped) as err:
        await ask(router, [a, b])
    exc = err.value
    assert (exc.status_code, exc.error_type, exc.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    # a's one request per minute frees in 60 s, b's two in 30 s: the soonest is told.
    assert 28 <= int(exc.headers["retry-after-ms"]) / 1000 <= 30 and exc.headers["Retry-After"] == "30"
    assert (calls(a), calls(b)) == (1, 2)


async def test_tokens_are_reserved_up_front_and_corrected_to_the_usage() -> None:
    """tpm 1000 and max_tokens 400: three requests reserve more than the cap, but each uses 10 tokens; once
    corrected, all of them fit. A request that can never fit is told not to retry."""
    a, b = dep("a", tpm=1000), dep("b")
    router = Router(quotas=memory())
    served = [(await ask(router, [a, b], max_tokens=400))[1] for _ in range(3)]
    served += [(await ask(router, [a, b], max_tokens=400, stream=True))[1] for _ in range(3)]
    assert served == ["a"] * 6
    with pytest.raises(DeploymentCapped) as err:
        await ask(router, [a], max_tokens=2000)
    assert err.value.headers == {"x-should-retry": "false"}


async def test_two_requests_in_flight_cannot_both_squeeze_under_the_tpm() -> None:
    a, b = dep("a", tpm=1000), dep("b")
    gate = asyncio.Event()
    original = a.backend.chat
    entered: list[int] = []

    async def slow(request, ctx):  # type: ignore[no-untyped-def]
        entered.append(1)
        await gate.wait()
        return await original(request, ctx)

    a.backend.chat = slow  # type: ignore[method-assign]
    router = Router(quotas=memory())
    first = asyncio.ensure_future(ask(router, [a, b], max_tokens=600))
    await wait_until_async(lambda: entered, what="the first request is being answered by a")
    second = await ask(router, [a, b], max_tokens=600)  # a holds 600 + the prompt for the first
    gate.set()
    assert (await first)[1] == "a" and second[1] == "b"


async def test_a_failed_attempt_gives_its_tokens_back() -> None:
    a, b = dep("a", tpm=1000), dep("b")
    router = Router(quotas=memory())
    a.backend.fail = True  # type: ignore[attr-defined]
    assert (await ask(router, [a, b], max_tokens=600))[1] == "b"
    a.backend.fail = False  # type: ignore[attr-defined]
    assert (await ask(router, [a, b], max_tokens=600))[1] == "a"  # the failed one's 600 came back


async def test_a_slot_elsewhere_spends_none_of_the_quota() -> None:
    """max_concurrency still works with the caps: a full deployment is skipped for its slot before its
    quota is counted, so a request served elsewhere leaves the quota to the next one."""
    a, b = dep("a", rpm=1, max_concurrency=1), dep("b")
    router = Router(quotas=memory())
    held = a.scheduler.try_acquire(Scheduling(Priority.INTERACTIVE, "other"))
    assert (await ask(router, [a, b]))[1] == "b"
    held.release()  # type: ignore[union-attr]
    assert (await ask(router, [a, b]))[1] == "a"
    assert (await ask(router, [a, b]))[1] == "b"  # now a's one request of the minute is spent


class Down:
    """A store that cannot be asked (Redis down)."""

    async def take(self, deployment: str, rpm: int | None, tpm: int | None, tokens: int) -> Verdict:
        return Verdict(False, unavailable=True)

    async def correct(self, *args: Any) -> None:
        raise AssertionError("nothing was held")


async def test_caps_that_cannot_be_checked_follow_rate_limit_failure() -> None:
    opened, closed, free = dep("open", rpm=1), dep("closed", rpm=1, rate_limit_failure="closed"), dep("free")
    router = Router(quotas=Down())
    assert [(await ask(router, [opened]))[1] for _ in range(3)] == ["open"] * 3
    assert (await ask(router, [closed, free]))[1] == "free"
    with pytest.raises(QuotaUnavailable) as err:
        await ask(router, [closed])
    assert err.value.status_code == 503 and calls(closed) == 0


async def test_a_router_without_a_store_enforces_nothing() -> None:
    a = dep("a", rpm=1)
    assert [(await ask(Router(), [a]))[1] for _ in range(3)] == ["a"] * 3


async def test_two_replicas_share_the_caps_through_redis() -> None:
    """Each replica has its own deployments and router (as two processes would); Redis holds the minute."""
    async with fresh_redis() as (client, prefix):
        limiters: list[RateLimiter] = [RedisRateLimiter(client, prefix, None) for _ in range(2)]
        replicas = [(Router(quotas=DeploymentQuotas(lim, RedisLink(None))), dep("a", rpm=3, tpm=1000), dep("b"))
                    for lim in limiters]
        served = []
        for i in range(6):
            router, a, b = replicas[i % 2]
            served.append((await ask(router, [a, b], max_tokens=100))[1])
        assert served == ["a", "a", "a", "b", "b", "b"]
        assert sum(calls(a) for _, a, _ in replicas) == 3
        for lim in limiters:
            await lim.flush()  # the tokens' corrections, which wait in memory until then
        secs, micros = await client.time()
        tok = float(await client.get(f"{prefix}rl:dep:a:tok")) - (secs * 1000 + micros / 1000)
        # Three requests of 10 tokens each (3 + 7) are left of the 3 x (100 + prompt) reserved: 30/1000 of a minute.
        assert 1700 <= tok <= 1800, tok


async def test_a_continued_stream_corrects_each_leg_on_its_own_deployment() -> None:
    """a breaks after its first chunk; b continues. a's hold is corrected to what a relayed, b's to the rest."""
    a, b = dep("a", tpm=100_000), dep("b", tpm=100_000)

    async def breaks(request, ctx):  # type: ignore[no-untyped-def]
        a.backend.calls += 1  # type: ignore[attr-defined]

        async def frames():  # type: ignore[no-untyped-def]
            yield (b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
                   b'{"role":"assistant","content":"hello "},"finish_reason":null}]}\n\n')
            raise UpstreamUnavailable("cut")
        return frames()

    a.backend.chat_stream = breaks  # type: ignore[method-assign]
    a.backend.supports_continuation = b.backend.supports_continuation = True
    store = Recording()
    await ask(Router(quotas=store), [a, b], max_tokens=50, stream=True)
    taken, corrected = dict(store.taken), dict(store.corrected)
    prompt = taken["a"] - 50  # each reserved the prompt and max_tokens
    assert taken == {"a": prompt + 50, "b": prompt + 50} and prompt > 0
    # a's leg: the prompt and the one chunk it relayed; b's: the usage it reported itself (3 + 7).
    assert corrected == {"a": (prompt + 1) - (prompt + 50), "b": 10 - (prompt + 50)}


class Recording:
    """A store that lets everything through and records what it was asked."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, int]] = []
        self.corrected: list[tuple[str, int]] = []

    async def take(self, deployment: str, rpm: int | None, tpm: int | None, tokens: int) -> Verdict:
        self.taken.append((deployment, tokens))
        return Verdict(True)

    async def correct(self, deployment: str, rpm: int | None, tpm: int, delta: int) -> None:
        self.corrected.append((deployment, delta))


def test_refusals_are_gateway_errors_that_fail_over_to_the_last_resort() -> None:
    assert issubclass(DeploymentCapped, GatewayError) and DeploymentCapped("x").retryable
    assert not DeploymentCapped("x").counts_against_breaker
