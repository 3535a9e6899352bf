"""The scheduler on its own: who gets the next slot (class, weighted fair share, arrival), the caps of the
less urgent classes, the bounded waiting room, and slots given back exactly once (cancel, timeout, the
finalizer). In-process and in milliseconds; the router's use of it is in test_scheduler_router.py."""

from __future__ import annotations

import asyncio
import gc

import pytest

from backends.contract.priority import Priority, Scheduling
from routing.scheduler import Limits, QueueFull, Scheduler, Slot

I, N, B = Priority.INTERACTIVE, Priority.NEAR_REAL_TIME, Priority.BATCH


def s(tenant: str, p: Priority = I, weight: float = 1.0) -> Scheduling:
    return Scheduling(p, tenant, weight)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


class Queue:
    """Waiters started in order; `order` records who got a slot, in the order they got it."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.order: list[str] = []
        self.slots: dict[str, Slot] = {}
        self.tasks: dict[str, asyncio.Task] = {}

    async def add(self, name: str, sched: Scheduling, timeout: float = 10.0) -> asyncio.Task:
        async def wait() -> None:
            slot = await self.scheduler.acquire(sched, timeout)
            self.order.append(name)
            self.slots[name] = slot
        self.tasks[name] = task = asyncio.ensure_future(wait())
        await settle()
        return task

    async def release(self, name: str) -> None:
        self.slots.pop(name).release()
        await settle()


async def test_a_free_slot_goes_to_the_most_urgent_class_first() -> None:
    q = Queue(Scheduler(Limits(capacity=1, batch_share=1.0)))
    held = q.scheduler.try_acquire(s("x"))
    assert held is not None and q.scheduler.try_acquire(s("y")) is None
    for name, p in (("batch", B), ("nrt", N), ("inter", I), ("inter2", I)):
        await q.add(name, s(name, p))
    assert q.order == [] and q.scheduler.snapshot()["waiting"] == {"interactive": 2, "near-real-time": 1, "batch": 1}
    held.release()
    await settle()
    for name in ("inter", "inter2", "nrt"):
        assert q.order[-1] == name
        await q.release(name)
    assert q.order == ["inter", "inter2", "nrt", "batch"]


async def test_within_a_class_the_least_served_tenant_goes_first_and_a_tenant_in_arrival_order() -> None:
    q = Queue(Scheduler(Limits(capacity=2)))
    for i in range(2):
        await q.add(f"a{i}", s("A"))
    for i in range(2, 8):
        await q.add(f"a{i}", s("A"))
    await q.add("b0", s("B"))
    assert q.order == ["a0", "a1"]
    await q.release("a0")
    assert q.order[-1] == "b0", "B (no slot) goes before A's six waiters"
    await q.release("a1")
    await q.release("b0")
    assert q.order == ["a0", "a1", "b0", "a2", "a3"], "A's own waiters in arrival order"


async def test_weights_share_the_slots_in_their_proportion() -> None:
    q = Queue(Scheduler(Limits(capacity=4)))
    blockers = [q.scheduler.try_acquire(s("C")) for _ in range(4)]
    for i in range(8):
        await q.add(f"a{i}", s("A", weight=3))
    for i in range(8):
        await q.add(f"b{i}", s("B", weight=1))
    for slot in blockers:
        slot.release()  # type: ignore[union-attr]
    await settle()
    assert sorted(x[0] for x in q.order) == ["a", "a", "a", "b"], q.order
    snap = q.scheduler.snapshot()
    assert snap["in_service"]["interactive"] == 4 and snap["waiting"]["interactive"] == 12
    for task in q.tasks.values():
        task.cancel()
    await settle()
    assert q.scheduler.snapshot()["waiting"]["interactive"] == 0


async def test_batch_holds_at_most_its_share_and_interactive_gets_in_at_once() -> None:
    sched = Scheduler(Limits(capacity=4, batch_share=0.5))
    batch = [sched.try_acquire(s("T", B)) for _ in range(3)]
    assert batch[0] is not None and batch[1] is not None and batch[2] is None, "2 of 4 slots for batch"
    inter = [sched.try_acquire(s("U", I)) for _ in range(3)]
    assert inter[0] is not None and inter[1] is not None and inter[2] is None, "the other 2 are interactive's"
    assert sched.snapshot()["caps"] == {"near-real-time": 4, "batch": 2}


async def test_near_real_time_share_keeps_headroom_for_interactive() -> None:
    sched = Scheduler(Limits(capacity=4, near_real_time_share=0.5))
    assert [sched.try_acquire(s("T", N)) is not None for _ in range(3)] == [True, True, False]
    assert sched.try_acquire(s("T", B)) is None, "batch counts against the near-real-time cap too"
    assert [sched.try_acquire(s("U", I)) is not None for _ in range(3)] == [True, True, False]


async def test_a_backend_that_preempts_batch_lets_urgent_requests_past_batch_slots() -> None:
    for preempts, expected in ((True, True), (False, False)):
        sched = Scheduler(Limits(capacity=2, batch_share=1.0, preempts_batch=preempts))
        assert sched.try_acquire(s("T", B)) and sched.try_acquire(s("T", B))
        assert (sched.try_acquire(s("U", I)) is not None) is expected
        assert sched.try_acquire(s("T", B)) is None, "batch itself never goes past the capacity"


async def test_a_cancelled_waiter_leaves_the_queue_and_the_next_one_gets_the_slot() -> None:
    q = Queue(Scheduler(Limits(capacity=1)))
    await q.add("first", s("A"))
    gone = await q.add("gone", s("B"))
    await q.add("next", s("C"))
    gone.cancel()
    await settle()
    assert q.scheduler.snapshot()["waiting"]["interactive"] == 1
    await q.release("first")
    assert q.order == ["first", "next"]
    await q.release("next")
    assert q.scheduler.snapshot()["in_service"]["interactive"] == 0
    # Cancelled and a slot freed in the same instant (before the cancelled task runs again): the slot goes
    # to the next live waiter.
    await q.add("first2", s("A"))
    gone2 = await q.add("gone2", s("B"))
    await q.add("next2", s("C"))
    gone2.cancel()
    q.slots.pop("first2").release()
    await settle()
    assert q.order[-1] == "next2" and gone2.cancelled()
    await q.release("next2")
    assert q.scheduler.snapshot()["in_service"]["interactive"] == 0


async def test_a_slot_granted_as_its_waiter_is_cancelled_is_given_back() -> None:
    sched = Scheduler(Limits(capacity=1))
    held = sched.try_acquire(s("A"))
    task = asyncio.ensure_future(sched.acquire(s("B"), 10))
    await settle()
    held.release()  # type: ignore[union-attr]  # grants B's future ...
    task.cancel()  # ... and B leaves before it runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sched.snapshot()["in_service"]["interactive"] == 0
    assert sched.try_acquire(s("C")) is not None


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue() -> None:
    sched = Scheduler(Limits(capacity=1), "dep")
    held = sched.try_acquire(s("A"))
    with pytest.raises(QueueFull) as err:
        await sched.acquire(s("B"), 0.05)
    assert err.value.reason == "timeout" and err.value.status_code == 503 and not err.value.counts_against_breaker
    assert "dep" in err.value.message and err.value.headers["Retry-After"] == "1"
    assert sched.snapshot()["waiting"]["interactive"] == 0 and sched.refused["timeout"] == 1
    held.release()  # type: ignore[union-attr]


async def test_a_full_waiting_room_gives_a_newcomer_the_place_of_a_less_urgent_or_more_served_waiter() -> None:
    q = Queue(Scheduler(Limits(capacity=2, max_queue=2)))
    await q.add("a0", s("A"))
    await q.add("a00", s("A"))
    a1, a2 = await q.add("a1", s("A")), await q.add("a2", s("A"))
    await q.add("b0", s("B"))  # B has nothing: it takes A's newest place
    assert a2.done() and isinstance(a2.exception(), QueueFull) and a2.exception().reason == "evicted"
    with pytest.raises(QueueFull) as err:  # A, the most served, cannot take anyone's place
        await q.scheduler.acquire(s("A"), 10)
    assert err.value.reason == "full"
    await q.release("a0")
    assert q.order == ["a0", "a00", "b0"] and not a1.done(), "B holds nothing, A one: B first"
    # A batch waiter gives its place to an interactive newcomer, whoever is served more.
    q2 = Queue(Scheduler(Limits(capacity=1, max_queue=1, batch_share=1.0)))
    held = q2.scheduler.try_acquire(s("X"))
    line = await q2.add("line", s("B", B))
    await q2.add("user", s("Y", I))
    assert isinstance(line.exception(), QueueFull)
    held.release()  # type: ignore[union-attr]
    await settle()
    assert q2.order == ["user"]
    for task in [*q.tasks.values(), *q2.tasks.values()]:
        task.cancel()
    await settle()


async def test_a_slot_is_released_once_and_a_dropped_one_by_the_finalizer() -> None:
    sched = Scheduler(Limits(capacity=2))
    slot = sched.try_acquire(s("A"))
    assert slot is not None
    slot.release()
    slot.release()
    assert sched.snapshot()["in_service"]["interactive"] == 0
    held, kept = sched.try_acquire(s("B")), sched.try_acquire(s("C"))
    assert held is not None and kept is not None and sched.try_acquire(s("D")) is None
    del held  # dropped unreleased
    gc.collect()
    await settle()
    assert sched.snapshot()["in_service"]["interactive"] == 1 and sched.dropped == 1
    kept.release()


async def test_a_larger_capacity_from_a_reload_lets_waiters_in_at_once() -> None:
    q = Queue(Scheduler(Limits(capacity=1)))
    await q.add("a", s("A"))
    await q.add("b", s("B"))
    q.scheduler.configure(Limits(capacity=2))
    await settle()
    assert q.order == ["a", "b"]
    for name in ("a", "b"):
        await q.release(name)


async def test_an_unlimited_deployment_is_not_scheduled() -> None:
    sched = Scheduler(Limits(capacity=None))
    assert not sched.limited and sched.has_room(s("A", B))
    slot = sched.try_acquire(s("A"))
    assert slot is not None and not slot.held
    assert sched.granted == 0


def test_a_reload_keeps_a_deployment_s_scheduler_with_its_new_limits() -> None:
    from routing.config import GatewayConfig
    from routing.runtime import build_runtime

    def config(capacity: int, url: str = "http://127.0.0.1:9/v1") -> GatewayConfig:
        return GatewayConfig.model_validate({
            "providers": {"p": {"kind": "vllm", "base_url": url}},
            "deployments": [{"name": "d", "provider": "p", "model": "m", "max_concurrency": capacity}],
            "routes": [{"name": "r", "deployments": ["d"]}]})

    first = build_runtime(config(2), {})
    held = first.deployments["d"].scheduler.try_acquire(s("A"))
    second = build_runtime(config(3), {}, previous=first, version=2)
    sched = second.deployments["d"].scheduler
    assert sched is first.deployments["d"].scheduler and sched.limits.capacity == 3
    assert sched.snapshot()["in_service"]["interactive"] == 1, "the old runtime's request stays counted"
    moved = build_runtime(config(3, "http://127.0.0.1:10/v1"), {}, previous=second, version=3)
    assert moved.deployments["d"].scheduler is not sched, "another upstream: a scheduler of its own"
    held.release()  # type: ignore[union-attr]
