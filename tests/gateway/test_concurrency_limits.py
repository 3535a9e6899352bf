"""max_concurrent_requests, held to one contract by both limiters (Redis at $REDIS_URL, and this process):
at most `limit` held; a waiter gets the place a release frees, the more urgent class first, in arrival
order within a class; a wait runs out; a waiter that leaves, and a hold given back twice, change nothing
for the others. Then what only Redis has: two limiters (two replicas) share the count, and a dead
replica's holders and waiters expire."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from backends.contract.priority import Priority
from gateway import concurrency
from gateway.concurrency import ConcurrencyLimiter, Hold, RedisConcurrency, WaitedTooLong, concurrency_limiter
from tests.redis_env import fresh_redis
from tests.waiting import wait_until_async

I, N, B = Priority.INTERACTIVE, Priority.NEAR_REAL_TIME, Priority.BATCH


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[ConcurrencyLimiter]:
    if request.param == "memory":
        yield concurrency_limiter(None)
        return
    async with fresh_redis() as (client, prefix):
        lim = concurrency_limiter(client, prefix)
        assert isinstance(lim, RedisConcurrency)
        yield lim
        await lim.aclose()


async def test_at_most_limit_are_held_and_a_release_lets_the_next_in(limiter: ConcurrencyLimiter) -> None:
    held = [await limiter.acquire("key:a", 2, I, 1) for _ in range(2)]
    waiting = asyncio.ensure_future(limiter.acquire("key:a", 2, I, 5))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    other = await limiter.acquire("key:b", 2, I, 1)  # another subject is counted apart
    held[0].release()
    held[0].release()  # once only: a second release frees nothing more
    third = await asyncio.wait_for(waiting, 2)
    with pytest.raises(WaitedTooLong):
        await limiter.acquire("key:a", 2, I, 0.2)
    for h in (held[1], third, other):
        h.release()
    again = await limiter.acquire("key:a", 2, I, 1)
    again.release()


async def test_waiters_go_by_class_then_arrival_and_one_that_leaves_is_skipped(limiter: ConcurrencyLimiter) -> None:
    holder = await limiter.acquire("key:o", 1, I, 1)
    order: list[str] = []
    holds: dict[str, Hold] = {}

    async def wait(name: str, p: Priority) -> None:
        holds[name] = await limiter.acquire("key:o", 1, p, 10)
        order.append(name)

    tasks = {}
    for name, p in (("batch", B), ("nrt1", N), ("gone", I), ("nrt2", N), ("inter", I)):
        tasks[name] = asyncio.ensure_future(wait(name, p))
        await asyncio.sleep(0.06)  # distinct arrival times (Redis orders by its clock, in ms)
    tasks["gone"].cancel()
    await asyncio.sleep(0.1)
    holder.release()
    for expected in ("inter", "nrt1", "nrt2", "batch"):
        # Until the next one is granted (the one that left, should Redis still list it, expires in WAIT_TTL_MS).
        await wait_until_async(lambda: bool(order) and order[-1] == expected, timeout=10,
                               what=f"{expected} granted next")
        holds[expected].release()
    assert order == ["inter", "nrt1", "nrt2", "batch"]


async def test_two_replicas_share_the_count() -> None:
    async with fresh_redis() as (client, prefix):
        one, two = RedisConcurrency(client, prefix), RedisConcurrency(client, prefix)
        try:
            held = await one.acquire("key:s", 1, I, 1)
            with pytest.raises(WaitedTooLong):
                await two.acquire("key:s", 1, I, 0.2)
            waiting = asyncio.ensure_future(two.acquire("key:s", 1, I, 5))
            await asyncio.sleep(0.1)
            held.release()  # on replica one: replica two's waiter finds the place at its next poll
            (await asyncio.wait_for(waiting, 2)).release()
        finally:
            await one.aclose()
            await two.aclose()


async def test_a_dead_replica_s_holders_and_waiters_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concurrency, "HOLD_TTL_MS", 300)
    monkeypatch.setattr(concurrency, "WAIT_TTL_MS", 200)
    async with fresh_redis() as (client, prefix):
        dead, alive = RedisConcurrency(client, prefix), RedisConcurrency(client, prefix)
        try:
            lost = await dead.acquire("key:d", 1, I, 1)
            dead._mine.clear()  # the replica is gone: nobody renews its holder
            assert lost is not None
            got = await alive.acquire("key:d", 1, I, 3)  # free once the holder's entry expired
            got.release()
            # A live holder is renewed past its TTL.
            kept = await alive.acquire("key:d", 1, I, 1)
            monkeypatch.setattr(concurrency, "HOLD_TTL_MS", 300)
            await asyncio.sleep(0.6)
            with pytest.raises(WaitedTooLong):
                await dead.acquire("key:d", 1, I, 0.1)
            kept.release()
        finally:
            lost._owner = None  # type: ignore[union-attr]
            await dead.aclose()
            await alive.aclose()
