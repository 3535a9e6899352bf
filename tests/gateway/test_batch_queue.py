"""The batches' work queue and state stores, each contract held against both of its implementations: the
queue on Redis Streams and in this process; the state in Redis and on local disk (which must also come
back after a restart). Redis is the one at $REDIS_URL, with a fresh key prefix per test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.batches.disk import DiskBatchStore, StateDirBusy
from gateway.batches.queue import MemoryWorkQueue, RedisWorkQueue, WorkQueue
from gateway.batches.state import batch_store
from gateway.batches.stores import BatchStore, MemoryBatchStore, RedisBatchStore
from tests.redis_env import fresh_redis

DAY = 86_400.0


@pytest.fixture
async def redis_backend() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    async with fresh_redis() as live:
        yield live


@pytest.fixture(params=["memory", "redis"])
async def queue(request: pytest.FixtureRequest, redis_backend: tuple[aioredis.Redis, str]) -> WorkQueue:
    return MemoryWorkQueue() if request.param == "memory" else RedisWorkQueue(*redis_backend)


@pytest.fixture(params=["disk", "redis"])
async def store(request: pytest.FixtureRequest, redis_backend: tuple[aioredis.Redis, str],
                tmp_path: Path) -> AsyncIterator[BatchStore]:
    s: BatchStore = DiskBatchStore(tmp_path / "state") if request.param == "disk" else RedisBatchStore(*redis_backend)
    yield s
    await s.aclose()


# -- the queue -------------------------------------------------------------------------------------------------


async def test_two_consumers_take_every_line_once_and_ack_ends_pending(queue: WorkQueue) -> None:
    assert await queue.take("b1", "a", 5) == [] and await queue.pending("b1") == 0, "nothing before it is queued"
    await queue.enqueue("b1", list(range(10)), DAY)
    assert await queue.queued("b1")
    await queue.enqueue("b1", list(range(10)), DAY)  # a coordinator that took over: nothing queued twice
    a = await queue.take("b1", "a", 4)
    b = await queue.take("b1", "b", 100)
    assert sorted(a + b) == list(range(10)) and not set(a) & set(b)
    assert await queue.take("b1", "a", 5) == [] and await queue.pending("b1") == 10
    await queue.ack("b1", a)
    assert await queue.pending("b1") == 6
    await queue.drop("b1")
    assert await queue.pending("b1") == 0 and not await queue.queued("b1")


async def test_a_dead_consumers_lines_are_reclaimed_and_a_kept_line_is_not(queue: WorkQueue) -> None:
    await queue.enqueue("b2", [0, 1, 2, 3], DAY)
    dead = await queue.take("b2", "dead", 2)
    alive = await queue.take("b2", "alive", 2)
    assert await queue.reclaim("b2", "other", 0.2, 10) == [], "nothing idle yet"
    for _ in range(3):
        await asyncio.sleep(0.1)
        assert sorted(await queue.keep("b2", "alive", alive)) == sorted(alive)  # the heartbeat
    taken = await queue.reclaim("b2", "other", 0.2, 10)
    assert sorted(taken) == sorted(dead), "the unkept lines, and only those"
    assert await queue.keep("b2", "dead", dead) == [], "a stalled replica's heartbeat does not take them back"
    assert sorted(await queue.keep("b2", "other", dead)) == sorted(dead)
    assert await queue.pending("b2") == 4


async def test_lines_given_back_are_free_at_once(queue: WorkQueue) -> None:
    await queue.enqueue("b3", [0, 1, 2], DAY)
    mine = await queue.take("b3", "stopping", 2)
    await queue.give_back("b3", "stopping", mine)
    assert sorted(await queue.reclaim("b3", "next", 30.0, 10)) == sorted(mine), "no lease_s to wait out"


async def test_a_skipped_line_index_is_never_queued(queue: WorkQueue) -> None:
    await queue.enqueue("b4", [0, 2, 5], DAY)
    assert sorted(await queue.take("b4", "a", 10)) == [0, 2, 5]


async def test_queueing_cut_short_resumes_after_the_last_line_queued(redis_backend) -> None:
    client, prefix = redis_backend
    q = RedisWorkQueue(client, prefix)
    await q.enqueue("b5", [0, 1, 2], DAY)
    await client.delete(f"{prefix}batch:b5:queued")  # as if the coordinator died before it marked the queue done
    assert not await q.queued("b5")
    await q.enqueue("b5", list(range(2500)), DAY)  # in several round trips
    assert await client.xlen(f"{prefix}batch:b5:q") == 2500
    taken = await q.take("b5", "a", 5000)
    assert taken == list(range(2500)), "each line once, in order"


# -- the state stores --------------------------------------------------------------------------------------------


async def test_a_finished_line_is_kept_once(store: BatchStore) -> None:
    assert await store.record_line("b1", "x", {"v": 1}, False, DAY)
    assert not await store.record_line("b1", "x", {"v": 2}, True, DAY), "the first one stands"
    assert await store.record_line("b1", "y", {"v": 3}, True, DAY)
    assert await store.lines("b1") == {"x": {"v": 1}, "y": {"v": 3}}
    assert await store.finished("b1") == {"x", "y"}
    assert await store.is_finished("b1", "x") and not await store.is_finished("b1", "z")
    assert await store.counts("b1") == (2, 1)


async def test_disk_state_comes_back_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "state"
    first = DiskBatchStore(root)
    now = int(time.time())
    await first.put("batch", {"id": "batch_1", "created_at": now, "status": "in_progress"}, "key:k", DAY)
    await first.put("file", {"id": "file-1", "created_at": now}, "key:k", DAY)
    await first.put("file", {"id": "file-2", "created_at": now}, "key:k", DAY)
    await first.delete("file", "file-2", "key:k")
    await first.put("file", {"id": "file-old", "created_at": now}, "key:k", 0.05)
    await first.activate("batch_1", True)
    await first.cancel("batch_1", DAY)
    await first.record_line("batch_1", "a", {"ok": True}, False, DAY)
    await first.record_line("batch_1", "b", {"ok": False}, True, DAY)
    with pytest.raises(StateDirBusy):
        DiskBatchStore(root)  # a second gateway process on the same state
    await first.aclose()  # as a SIGKILL would: the kernel lets go of the lock
    await asyncio.sleep(0.1)

    again = DiskBatchStore(root)
    try:
        assert (await again.get("batch", "batch_1")) == ({"id": "batch_1", "created_at": now,
                                                           "status": "in_progress"}, "key:k")
        assert [f["id"] for f in await again.list("file", "key:k")] == ["file-1"], "deleted and expired are gone"
        assert await again.active() == ["batch_1"] and await again.cancelled("batch_1") is not None
        assert await again.lines("batch_1") == {"a": {"ok": True}, "b": {"ok": False}}
        assert await again.counts("batch_1") == (2, 1)
        assert not await again.record_line("batch_1", "a", {"ok": "again"}, False, DAY)
    finally:
        await again.aclose()


def _cut_short(journal: Path) -> None:
    with open(journal, "ab") as f:
        f.write(b'{"c": "b", "f": 0, "l": {"n"')  # the process died half-way through a write


async def test_a_journal_row_cut_short_by_a_crash_is_dropped(tmp_path: Path) -> None:
    root = tmp_path / "state"
    first = DiskBatchStore(root)
    await first.put("batch", {"id": "batch_2", "created_at": 1}, "master", DAY)
    await first.record_line("batch_2", "a", {"n": 1}, False, DAY)
    await first.aclose()
    _cut_short(root / "lines" / "batch_2.jsonl")
    again = DiskBatchStore(root)
    try:
        assert await again.finished("batch_2") == {"a"}
        assert await again.record_line("batch_2", "b", {"n": 2}, False, DAY)
    finally:
        await again.aclose()
    third = DiskBatchStore(root)
    try:
        assert await third.lines("batch_2") == {"a": {"n": 1}, "b": {"n": 2}}, "the next row starts clean"
    finally:
        await third.aclose()


async def test_without_a_usable_state_dir_batches_fall_back_to_memory(tmp_path: Path) -> None:
    """A second process on the same state (`--workers N` without Redis), or a directory that cannot be
    written: the gateway still starts, its batches in memory."""
    no_redis = SimpleNamespace(link=SimpleNamespace(client=None))
    owner = batch_store(no_redis, "gw:", tmp_path / "state")  # type: ignore[arg-type]
    try:
        assert isinstance(owner, DiskBatchStore)
        assert type(batch_store(no_redis, "gw:", tmp_path / "state")) is MemoryBatchStore  # type: ignore[arg-type]
    finally:
        await owner.aclose()
    (tmp_path / "a-file").write_bytes(b"")
    assert type(batch_store(no_redis, "gw:", tmp_path / "a-file" / "state")) is MemoryBatchStore  # type: ignore[arg-type]
    assert type(batch_store(no_redis, "gw:", None)) is MemoryBatchStore  # type: ignore[arg-type]


# -- sharing the batch slots between tenants --------------------------------------------------------------


def _runner_taking_from(batches: list, queue: WorkQueue) -> tuple[Any, list[str]]:
    """A runner whose views are `batches`; what it starts is only noted (the owner of each line)."""
    from gateway.batches.runner import BatchRunner
    from routing.config import BatchesConfig

    runner = BatchRunner.__new__(BatchRunner)
    runner.config, runner.queue, runner.holder, runner._turn, runner._running = BatchesConfig(), queue, "me", 0, {}
    started: list[str] = []

    async def views() -> list:
        return batches

    def start(batch: Any, index: int) -> None:
        started.append(batch.owner)
        runner._running[object()] = (batch.id, index)

    runner._views, runner._start = views, start
    return runner, started


def _batch(batch_id: str, owner: str, weight: float | None = None) -> Any:
    from gateway.auth import Principal
    from gateway.batches.runner import _Batch
    from gateway.keys import KeyRecord

    doc = {"status": "in_progress", "expires_at": time.time() + DAY}
    key = KeyRecord(id=owner, alias=owner, weight=weight)
    return _Batch(batch_id, doc, f"key:{owner}", [{"custom_id": str(i)} for i in range(20)], Principal(key=key), False)


async def test_free_slots_are_shared_by_tenant_and_weight_not_by_batch() -> None:
    queue = MemoryWorkQueue()
    batches = [_batch("a1", "a"), _batch("a2", "a"), _batch("a3", "a"), _batch("b1", "b")]
    for b in batches:
        await queue.enqueue(b.id, range(20), DAY)
    runner, started = _runner_taking_from(batches, queue)
    assert await runner._fill(4) == 4
    assert sorted(started) == ["key:a", "key:a", "key:b", "key:b"], "three batches of one key get no more than one"
    # The next slot goes to the tenant with the fewest lines running for its weight: b, weighted 3.
    heavy = [_batch("a1", "a"), _batch("b1", "b", weight=3.0)]
    runner, started = _runner_taking_from(heavy, queue)
    assert await runner._fill(4) == 4
    assert sorted(started) == ["key:a", "key:b", "key:b", "key:b"]
