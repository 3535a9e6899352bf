"""GCRA rate limiter: exact bursts, both-or-nothing reservations, replicas, outages.

Behaviour tests run against both the Redis store (REDIS_URL, default DB 15,
unique key prefix per test, only its own keys removed) and the in-process one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.ratelimit import LimitResult, LimitSpec, RateLimiter, format_duration
from gateway.store_errors import StoreUnavailable, guard
from tests.paths import ROOT
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until_async

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

Factory = Callable[..., RateLimiter]


_unreachable: list[str] = []  # remembered so a dead Redis costs one probe, not one per test


async def _client() -> aioredis.Redis:
    if _unreachable:
        pytest.skip(_unreachable[0])
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2,
                                     retry=Retry(NoBackoff(), 0))
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await client.aclose()
        _unreachable.append(f"Redis not reachable at {REDIS_URL} ({exc}): Redis rate-limit tests NOT run")
        pytest.skip(_unreachable[0])
    return client


async def _cleanup(client: aioredis.Redis, prefix: str) -> None:
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def redis_env() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A live client and a fresh prefix; deletes only this test's keys afterwards."""
    client = await _client()
    prefix = f"test:{uuid4().hex}:"
    yield client, prefix
    await _cleanup(client, prefix)


@pytest.fixture(params=["redis", "memory"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """Builds limiters ("replicas") sharing one store: a Redis prefix, or one in-process state."""
    if request.param == "memory":
        shared = RateLimiter(None)
        yield lambda **_: shared
        return
    admin = await _client()
    prefix = f"test:{uuid4().hex}:"
    clients: list[aioredis.Redis] = []

    def build(timeout_s: float | None = 0.5) -> RateLimiter:
        client = aioredis.Redis.from_url(REDIS_URL)  # its own pool, like another replica
        clients.append(client)
        return RateLimiter(client, prefix, timeout_s=timeout_s)

    yield build
    for client in clients:
        await client.aclose()
    await _cleanup(admin, prefix)


# ---------------------------------------------------------------- behaviour (Redis and in-process)

async def test_burst_of_exactly_n_then_refused(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=5)
    results = [await rl.acquire("key:a", spec, 0) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining_requests for r in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[-1]
    assert refused.reason == "requests"
    assert 11.5 < refused.retry_after_s <= 12.0  # one emission interval: 60 s / 5
    assert refused.remaining_requests == 0 and 59.0 < refused.reset_requests_s <= 60.0
    assert (await rl.acquire("key:other", spec, 0)).allowed  # subjects are independent


async def test_refills_continuously(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=300)  # one request back every 200 ms
    assert all([(await rl.acquire("key:a", spec, 0)).allowed for _ in range(300)])
    while (refused := await rl.acquire("key:a", spec, 0)).allowed:
        pass  # a slow machine may already have earned one back
    assert refused.reason == "requests" and 0 < refused.retry_after_s <= 0.2
    await asyncio.sleep(refused.retry_after_s + 0.01)
    again = await rl.acquire("key:a", spec, 0)
    assert again.allowed and again.remaining_requests == 0


async def test_tokens_reserve_refuse_adjust(make: Factory) -> None:
    rl, spec = make(), LimitSpec(tpm=1000)
    first = await rl.acquire("key:t", spec, 600)
    assert first.allowed and first.remaining_tokens == 400 and first.limit_requests is None
    refused = await rl.acquire("key:t", spec, 500)
    assert not refused.allowed and refused.reason == "tokens"
    assert 5.5 < refused.retry_after_s <= 6.0  # 100 tokens short at 60 ms per token
    await rl.adjust("key:t", spec, -400)  # the request used 200, not 600
    ok = await rl.acquire("key:t", spec, 500)
    assert ok.allowed and 300 <= ok.remaining_tokens <= 305  # plus ~1 token per 60 ms of refill


async def test_adjust_positive_never_refused_and_negative_stops_at_full(make: Factory) -> None:
    rl, spec = make(), LimitSpec(tpm=1000)
    assert (await rl.acquire("key:t", spec, 100)).allowed
    await rl.adjust("key:t", spec, 2000)  # used far more than reserved: a debt
    owed = await rl.acquire("key:t", spec, 0)
    assert not owed.allowed and owed.reason == "tokens"
    assert 65.0 < owed.retry_after_s <= 66.0 and owed.remaining_tokens == 0
    await rl.adjust("key:t", spec, -10_000)  # never more than a full bucket
    full = await rl.acquire("key:t", spec, 1000)
    assert full.allowed and full.remaining_tokens == 0
    assert not (await rl.acquire("key:t", spec, 100)).allowed


async def test_refused_on_tokens_keeps_request_slot(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=2, tpm=100)
    assert (await rl.acquire("key:b", spec, 80)).allowed
    refused = await rl.acquire("key:b", spec, 50)
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.remaining_requests == 1  # the refused call took no request slot
    second = await rl.acquire("key:b", spec, 20)
    assert second.allowed and second.remaining_requests == 0 and second.remaining_tokens == 0


async def test_refused_on_requests_keeps_tokens(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=1, tpm=1000)
    assert (await rl.acquire("key:c", spec, 100)).allowed
    refused = await rl.acquire("key:c", spec, 100)
    assert not refused.allowed and refused.reason == "requests"
    assert refused.remaining_tokens in (900, 901)  # 901 only if 60 ms of refill passed
    # 100 + 900 fit exactly only if the refused call reserved nothing.
    assert (await rl.acquire("key:c", LimitSpec(tpm=1000), 900)).allowed


async def test_cost_above_limit_is_never_allowed(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=10, tpm=1000)
    never = await rl.acquire("key:n", spec, 1001)
    assert not never.allowed and never.reason == "tokens" and never.retry_after_s == -1
    assert never.remaining_requests == 10 and never.remaining_tokens == 1000  # nothing consumed
    assert (await rl.acquire("key:n", spec, 1000)).allowed  # a whole bucket fits when full
    # Even while the request dimension is also exhausted, "never" wins: waiting cannot help.
    spent = [await rl.acquire("key:m", LimitSpec(rpm=1, tpm=10), 1) for _ in range(2)]
    assert spent[1].reason == "requests"
    assert (await rl.acquire("key:m", LimitSpec(rpm=1, tpm=10), 11)).retry_after_s == -1


async def test_headers(make: Factory) -> None:
    rl = make()
    result = await rl.acquire("key:h", LimitSpec(rpm=60, tpm=1000), 250)
    assert result.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "15s",
    }
    only_tokens = await rl.acquire("key:h2", LimitSpec(tpm=240_000), 1)
    assert set(only_tokens.headers()) == {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                                          "x-ratelimit-reset-tokens"}
    assert only_tokens.headers()["x-ratelimit-reset-tokens"] == "1ms"  # 0.25 ms, rounded up


async def test_unlimited_and_reset(make: Factory) -> None:
    rl = make()
    free = await rl.acquire("key:u", LimitSpec(), 10**9)
    assert free == LimitResult(True, None, 0.0) and free.headers() == {}
    assert LimitSpec(rpm=0, tpm=5) == LimitSpec(tpm=5)  # 0 reads as "no limit", as callers use it
    spec = LimitSpec(rpm=1)
    assert (await rl.acquire("key:u", spec, 0)).allowed
    assert not (await rl.acquire("key:u", spec, 0)).allowed
    await rl.reset("key:u")
    assert (await rl.acquire("key:u", spec, 0)).allowed


def test_spec_and_cost_validation() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError):
            LimitSpec(rpm=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        asyncio.run(RateLimiter(None).acquire("key:v", LimitSpec(tpm=10), -1))


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (-3, "0s"), (0.0002, "1ms"), (0.012, "12ms"), (0.02, "20ms"), (0.25, "250ms"), (1, "1s"),
    (1.5, "1.5s"), (17.436, "17.436s"), (60, "1m0s"), (59.9996, "1m0s"), (90.5, "1m30.5s"), (360, "6m0s"),
    (3600, "1h0m0s"), (3723.25, "1h2m3.25s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# ---------------------------------------------------------------- atomicity across replicas

async def test_concurrent_replicas_admit_exactly_the_limit(make: Factory) -> None:
    a, b = make(timeout_s=None), make(timeout_s=None)  # 200 cold connections: atomicity, not latency
    spec = LimitSpec(rpm=37, tpm=400)  # 37 x 10 tokens fit; refill is ~0.007 token/ms
    calls = [(a if i % 2 else b).acquire("key:race", spec, 10) for i in range(200)]
    results = await asyncio.gather(*calls)
    assert sum(r.allowed for r in results) == 37
    assert all(r.reason == "requests" for r in results if not r.allowed)
    assert 30 <= min(r.remaining_tokens for r in results) <= 31  # refused calls reserved no tokens


_WORKER = textwrap.dedent("""
    import asyncio, sys
    import redis.asyncio as aioredis
    from gateway.ratelimit import LimitSpec, RateLimiter

    async def main() -> None:
        client = aioredis.Redis.from_url(sys.argv[1])
        rl = RateLimiter(client, sys.argv[2], timeout_s=None)
        await client.ping()
        sys.stdin.readline()  # start line: every process begins together
        results = await asyncio.gather(*(rl.acquire("key:proc", LimitSpec(rpm=37), 1) for _ in range(100)))
        print(sum(r.allowed for r in results), flush=True)
        await client.aclose()

    asyncio.run(main())
""")


async def test_concurrent_processes_admit_exactly_the_limit(redis_env: tuple[aioredis.Redis, str]) -> None:
    _, prefix = redis_env
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, REDIS_URL, prefix], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(3)]
    await asyncio.sleep(0)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [await asyncio.to_thread(proc.communicate, timeout=30) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert sum(int(out) for out, _ in outputs) == 37


# ---------------------------------------------------------------- Redis specifics

async def test_keys_ttl_and_server_clock(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    rl = RateLimiter(client, prefix)
    assert (await rl.acquire("route:m", LimitSpec(rpm=60, tpm=1000), 500)).allowed
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros / 1000
    req, tok = f"{prefix}rl:route:m:req", f"{prefix}rl:route:m:tok"
    assert abs(float(await client.get(req)) - (now_ms + 1000)) < 500  # TAT in Redis-clock ms
    assert abs(float(await client.get(tok)) - (now_ms + 30_000)) < 500
    assert 1000 < await client.pttl(req) <= 2000 + 100  # until irrelevant, plus a small margin
    assert 30_000 < await client.pttl(tok) <= 31_000 + 100
    await rl.reset("route:m")
    assert await client.exists(req, tok) == 0


async def test_unlimited_spec_does_not_touch_redis() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    rl = RateLimiter(dead)
    assert (await rl.acquire("key:x", LimitSpec(), 5)).allowed
    await rl.adjust("key:x", LimitSpec(rpm=5), 100)  # no token limit: nothing to correct
    await dead.aclose()


@pytest.mark.parametrize("retry", ["default", "none"], ids=["default-retries", "no-retries"])
async def test_unreachable_redis_raises_store_unavailable_fast(retry: str) -> None:
    kwargs = {} if retry == "default" else {"retry": Retry(NoBackoff(), 0)}
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, **kwargs)
    rl = RateLimiter(dead, f"test:{uuid4().hex}:")
    spec = LimitSpec(rpm=10, tpm=100)
    async def adjust_then_flush() -> None:
        await rl.adjust("key:d", spec, -1)  # only noted in memory ...
        await rl.flush()  # ... and written here

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: rl.acquire("key:d", spec, 1), adjust_then_flush, lambda: rl.reset("key:d")]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await call()
        assert time.monotonic() - started < 1.0
        assert isinstance(info.value.__cause__, (redis.exceptions.RedisError, OSError, TimeoutError))
    await dead.aclose()


async def test_guard_wraps_only_store_errors() -> None:
    async def fail(exc: BaseException) -> None:
        raise exc

    for exc in (redis.exceptions.ConnectionError("x"), redis.exceptions.TimeoutError("x"), OSError("x"),
                asyncio.TimeoutError(), redis.exceptions.ResponseError("x")):
        with pytest.raises(StoreUnavailable) as info:
            await guard(fail(exc))
        assert info.value.__cause__ is exc
    with pytest.raises(KeyError):
        await guard(fail(KeyError("not a store problem")))
    with pytest.raises(StoreUnavailable, match="timed out"):
        await guard(asyncio.sleep(1), timeout=0.01)
    assert await guard(asyncio.sleep(0, "ok")) == "ok"
    with pytest.raises(RuntimeError):  # a RuntimeError of anything but a lost connection is a bug, not the store's
        await guard(fail(RuntimeError("cannot reuse already awaited coroutine")))


def test_a_pooled_connection_that_redis_reset_is_a_store_error_not_a_crash() -> None:
    """Redis restarts (or a proxy drops its connections) while a connection idles in the pool. On the
    gateway's event loop (uvloop), writing to it raises a RuntimeError, which redis-py passes on as is:
    it must reach the callers as `StoreUnavailable` (fail open), never as a 500 of the request."""
    url = urlsplit(REDIS_URL)

    async def scenario() -> None:
        await (await _client()).aclose()  # skips when there is no Redis
        with TcpProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
            client = aioredis.Redis.from_url(proxy.url(path=url.path or "/0"), socket_timeout=1,
                                             socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
            try:
                assert await guard(client.ping())  # one connection, now idle in the pool
                (idle,) = client.connection_pool._available_connections
                proxy.restore()  # resets every open connection, and goes on forwarding
                await wait_until_async(lambda: idle._writer.transport.is_closing(), timeout=10, interval=0.01,
                                       what="the reset reaching the client")
                with pytest.raises(StoreUnavailable):
                    await guard(client.get("x"))
                assert await guard(client.ping()), "the next call reconnects"
            finally:
                await client.aclose()

    uvloop.run(scenario())


# ---------------------------------------------------------------- in-process specifics

async def test_memory_state_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.ratelimit as ratelimit

    monkeypatch.setattr(ratelimit, "_MEMORY_SWEEP_AT", 5)
    rl = RateLimiter(None)
    clock = [0.0]
    rl._memory._now = lambda: clock[0]  # type: ignore[union-attr]
    for i in range(5):
        assert (await rl.acquire(f"key:{i}", LimitSpec(rpm=60), 0)).allowed  # TAT = 1000 ms each
    clock[0] = 2000.0  # all five are full again (idle)
    assert (await rl.acquire("key:new", LimitSpec(rpm=60), 0)).allowed
    assert list(rl._memory._tats) == ["gw:rl:key:new:req"]  # type: ignore[union-attr]


async def test_corrections_reach_other_replicas_with_the_next_acquire_or_flush() -> None:
    """A replica's TPM corrections cost no round trip of their own, yet every replica sees them."""
    client = await _client()
    prefix = f"test:{uuid4().hex}:"
    a, b = RateLimiter(client, prefix), RateLimiter(client, prefix)  # two replicas on the same Redis
    spec = LimitSpec(tpm=1000)
    assert (await a.acquire("key:r", spec, 900)).allowed
    await a.adjust("key:r", spec, -800)  # used 100 of the 900 reserved
    assert not (await b.acquire("key:r", spec, 500)).allowed  # not written yet
    await a.flush()
    assert (await b.acquire("key:r", spec, 500)).allowed  # after the flush, replica b sees the room
    await a.adjust("key:r", spec, -500)
    assert (await a.acquire("key:r", spec, 400)).allowed  # rides along with a's next acquire
    assert a._pending == {}
    await _cleanup(client, prefix)


async def test_a_failed_flush_keeps_the_corrections() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    rl = RateLimiter(dead, f"test:{uuid4().hex}:")
    spec = LimitSpec(tpm=100)
    await rl.adjust("key:f", spec, -30)
    await rl.adjust("key:f", spec, -20)
    with pytest.raises(StoreUnavailable):
        await rl.flush()
    assert rl._pending == {"key:f": (spec, -50)}
    with pytest.raises(StoreUnavailable):
        await rl.acquire("key:f", spec, 1)
    assert rl._pending == {"key:f": (spec, -50)}  # a failed acquire gives its ride-along back
    await dead.aclose()
