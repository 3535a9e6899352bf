"""GCRA rate limiter: exact bursts, both-or-nothing reservations, replicas, outages.

Behaviour tests run against both the Redis store (REDIS_URL, default DB 15,
unique key prefix per test, only its own keys removed) and the in-process one.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
import time
from typing import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
import redis.asyncio as aioredis
import redis.exceptions
import uvloop
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.ratelimit import (
    LimitResult,
    LimitSpec,
    MemoryRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    format_duration,
    rate_limiter,
)
from gateway.store_errors import StoreUnavailable, guard
from tests.paths import ROOT
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until_async

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

Factory = Callable[..., RateLimiter]

# Time passes between a test's limiter calls, and a busy machine makes it pass faster than the test expects:
# the bounds below allow exactly the refill that the measured time could have earned, so they stay exact
# on a quick machine (nothing earned) and still hold on a slow or loaded one.
EPS_S = 0.005  # float rounding of the ms TATs, the admission slack (at most 1 ms) and clock granularity


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def s(self) -> float:
        return time.monotonic() - self.started


def earned(per_minute: int, seconds: float) -> int:
    """The most a bucket of `per_minute` can refill in `seconds` (whole requests or tokens)."""
    return math.floor(per_minute * (seconds + EPS_S) / 60)


_unreachable: list[str] = []  # remembered so a dead Redis costs one probe, not one per test


async def _client() -> aioredis.Redis:
    """A live client, or the test fails: tests/run.sh (`make test`) always provides a Redis."""
    if _unreachable:
        pytest.fail(_unreachable[0])
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=2,
                                     retry=Retry(NoBackoff(), 0))
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        await client.aclose()
        _unreachable.append(f"the Redis rate-limit tests need a real Redis at {REDIS_URL} ({exc}); run them with "
                            f"`make test` (tests/run.sh), which finds or starts one, or set REDIS_URL")
        pytest.fail(_unreachable[0])
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
        shared = rate_limiter(None)
        yield lambda **_: shared
        return
    admin = await _client()
    prefix = f"test:{uuid4().hex}:"
    clients: list[aioredis.Redis] = []

    def build(timeout_s: float | None = 5.0) -> RateLimiter:  # bounds a broken Redis; latency is not tested here
        client = aioredis.Redis.from_url(REDIS_URL)  # its own pool, like another replica
        clients.append(client)
        return rate_limiter(client, prefix, timeout_s=timeout_s)

    yield build
    for client in clients:
        await client.aclose()
    await _cleanup(admin, prefix)


# ---------------------------------------------------------------- behaviour (Redis and in-process)

async def test_burst_of_exactly_n_then_refused(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=5)
    clock = Stopwatch()
    results = [await rl.acquire("key:a", spec, 0) for _ in range(6)]
    took = clock.s
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining_requests for r in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[-1]
    assert refused.reason == "requests"
    # One emission interval (60 s / 5), less the time the calls took.
    assert 12.0 - took - EPS_S <= refused.retry_after_s <= 12.0 + EPS_S, (refused.retry_after_s, took)
    assert refused.remaining_requests == 0 and 60.0 - took - EPS_S <= refused.reset_requests_s <= 60.0 + EPS_S
    assert (await rl.acquire("key:other", spec, 0)).allowed  # subjects are independent


async def test_refills_continuously(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=60)  # one request back every second
    assert all([(await rl.acquire("key:a", spec, 0)).allowed for _ in range(60)])
    while True:
        asked = time.monotonic()
        refused = await rl.acquire("key:a", spec, 0)
        if not refused.allowed:
            break  # (a slow machine may already have earned one back)
    assert refused.reason == "requests" and 0 < refused.retry_after_s <= 1.0
    await asyncio.sleep(refused.retry_after_s + 0.01)  # the wait the limiter asked for, and no more
    again = await rl.acquire("key:a", spec, 0)
    late = time.monotonic() - asked - refused.retry_after_s  # how much longer than asked this machine took
    assert again.allowed and again.remaining_requests <= earned(60, late), (again, late)


async def test_tokens_reserve_refuse_adjust(make: Factory) -> None:
    rl, spec = make(), LimitSpec(tpm=1000)
    clock = Stopwatch()
    first = await rl.acquire("key:t", spec, 600)
    assert first.allowed and first.remaining_tokens == 400 and first.limit_requests is None
    refused = await rl.acquire("key:t", spec, 500)
    took = clock.s
    assert not refused.allowed and refused.reason == "tokens"
    # 100 tokens short at 60 ms per token, less what refilled meanwhile
    assert 6.0 - took - EPS_S <= refused.retry_after_s <= 6.0 + EPS_S, (refused.retry_after_s, took)
    await rl.adjust("key:t", spec, -400)  # the request used 200, not 600
    ok = await rl.acquire("key:t", spec, 500)
    took = clock.s
    assert ok.allowed and 300 <= ok.remaining_tokens <= 300 + earned(1000, took), (ok, took)


async def test_adjust_positive_never_refused_and_negative_stops_at_full(make: Factory) -> None:
    rl, spec = make(), LimitSpec(tpm=1000)
    clock = Stopwatch()
    assert (await rl.acquire("key:t", spec, 100)).allowed
    await rl.adjust("key:t", spec, 2000)  # used far more than reserved: a debt
    owed = await rl.acquire("key:t", spec, 0)
    took = clock.s
    assert not owed.allowed and owed.reason == "tokens"
    assert 66.0 - took - EPS_S <= owed.retry_after_s <= 66.0 + EPS_S and owed.remaining_tokens == 0
    await rl.adjust("key:t", spec, -10_000)  # never more than a full bucket
    full = await rl.acquire("key:t", spec, 1000)
    assert full.allowed and full.remaining_tokens == 0
    assert not (await rl.acquire("key:t", spec, 100)).allowed


async def test_refused_on_tokens_keeps_request_slot(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=2, tpm=100)
    clock = Stopwatch()
    assert (await rl.acquire("key:b", spec, 80)).allowed
    refused = await rl.acquire("key:b", spec, 50)
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.remaining_requests == 1  # the refused call took no request slot
    second = await rl.acquire("key:b", spec, 20)
    assert second.allowed and second.remaining_requests == 0
    assert second.remaining_tokens <= earned(100, clock.s)  # 0, plus a token per 600 ms that passed


async def test_refused_on_requests_keeps_tokens(make: Factory) -> None:
    rl, spec = make(), LimitSpec(rpm=1, tpm=1000)
    clock = Stopwatch()
    assert (await rl.acquire("key:c", spec, 100)).allowed
    refused = await rl.acquire("key:c", spec, 100)
    assert not refused.allowed and refused.reason == "requests"
    assert 900 <= refused.remaining_tokens <= 900 + earned(1000, clock.s)  # plus a token per 60 ms that passed
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
        asyncio.run(rate_limiter(None).acquire("key:v", LimitSpec(tpm=10), -1))


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
    spec = LimitSpec(rpm=37, tpm=400)  # 37 x 10 tokens fit; one request back every 1.6 s, a token every 150 ms
    calls = [(a if i % 2 else b).acquire("key:race", spec, 10) for i in range(200)]
    clock = Stopwatch()
    results = await asyncio.gather(*calls)
    took = clock.s
    allowed = sum(r.allowed for r in results)
    assert 37 <= allowed <= 37 + earned(37, took), (allowed, took)  # exactly 37 unless 1.6 s went by
    assert all(r.reason == "requests" for r in results if not r.allowed)
    least = 400 - 10 * allowed  # refused calls reserved no tokens
    assert least <= min(r.remaining_tokens for r in results) <= least + earned(400, took)


_WORKER = textwrap.dedent("""
    import asyncio, sys
    import redis.asyncio as aioredis
    from gateway.ratelimit import LimitSpec, rate_limiter

    async def main() -> None:
        client = aioredis.Redis.from_url(sys.argv[1])
        rl = rate_limiter(client, sys.argv[2], timeout_s=None)
        await client.ping()
        sys.stdin.readline()  # start line: every process begins together
        results = await asyncio.gather(*(rl.acquire("key:proc", LimitSpec(rpm=37), 1) for _ in range(100)))
        print(sum(r.allowed for r in results), flush=True)
        await client.aclose()

    asyncio.run(main())
""")


@pytest.mark.process
async def test_concurrent_processes_admit_exactly_the_limit(redis_env: tuple[aioredis.Redis, str]) -> None:
    _, prefix = redis_env
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, REDIS_URL, prefix], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(3)]
    await asyncio.sleep(0)
    clock = Stopwatch()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [await asyncio.to_thread(proc.communicate, timeout=30) for proc in procs]
    took = clock.s
    assert all(proc.returncode == 0 for proc in procs)
    total = sum(int(out) for out, _ in outputs)
    assert 37 <= total <= 37 + earned(37, took), (total, took)  # exactly 37 unless 1.6 s went by


# ---------------------------------------------------------------- Redis specifics

async def test_keys_ttl_and_server_clock(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    rl = rate_limiter(client, prefix)
    clock = Stopwatch()
    assert (await rl.acquire("route:m", LimitSpec(rpm=60, tpm=1000), 500)).allowed
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros / 1000
    req, tok = f"{prefix}rl:route:m:req", f"{prefix}rl:route:m:tok"
    tat_req, tat_tok = float(await client.get(req)), float(await client.get(tok))
    ttl_req, ttl_tok = await client.pttl(req), await client.pttl(tok)
    took_ms = (clock.s + EPS_S) * 1000
    # TATs in Redis-clock ms: the script's now (no later than now_ms, no earlier than took_ms before) + the cost
    assert 0 <= now_ms + 1000 - tat_req <= took_ms
    assert 0 <= now_ms + 30_000 - tat_tok <= took_ms
    assert 2000 - took_ms <= ttl_req <= 2000  # until irrelevant, plus the 1 s margin, less the time gone by
    assert 31_000 - took_ms <= ttl_tok <= 31_000
    await rl.reset("route:m")
    assert await client.exists(req, tok) == 0


async def test_unlimited_spec_does_not_touch_redis() -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    rl = rate_limiter(dead)
    assert (await rl.acquire("key:x", LimitSpec(), 5)).allowed
    await rl.adjust("key:x", LimitSpec(rpm=5), 100)  # no token limit: nothing to correct
    await dead.aclose()


@pytest.mark.parametrize("retry", ["default", "none"], ids=["default-retries", "no-retries"])
async def test_unreachable_redis_raises_store_unavailable_fast(retry: str) -> None:
    kwargs = {} if retry == "default" else {"retry": Retry(NoBackoff(), 0)}
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, **kwargs)
    rl = rate_limiter(dead, f"test:{uuid4().hex}:")
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
        # The limiter's own 0.5 s bound, with room for a busy machine; redis-py's retries alone take about 4 s.
        assert time.monotonic() - started < 2.0
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
    rl = MemoryRateLimiter()
    clock = [0.0]
    rl._now = lambda: clock[0]  # type: ignore[method-assign]
    for i in range(5):
        assert (await rl.acquire(f"key:{i}", LimitSpec(rpm=60), 0)).allowed  # TAT = 1000 ms each
    clock[0] = 2000.0  # all five are full again (idle)
    assert (await rl.acquire("key:new", LimitSpec(rpm=60), 0)).allowed
    assert list(rl._tats) == ["gw:rl:key:new:req"]


async def test_corrections_reach_other_replicas_with_the_next_acquire_or_flush() -> None:
    """A replica's TPM corrections cost no round trip of their own, yet every replica sees them."""
    client = await _client()
    prefix = f"test:{uuid4().hex}:"
    a, b = RedisRateLimiter(client, prefix), RedisRateLimiter(client, prefix)  # two replicas on the same Redis
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
    rl = RedisRateLimiter(dead, f"test:{uuid4().hex}:")
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
