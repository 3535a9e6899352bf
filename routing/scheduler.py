"""One deployment's capacity, shared out by urgency first and fairly among tenants second.

A deployment with a capacity (`max_concurrency`, else what its backend serves at once) has one
`Scheduler` per replica. A request takes a `Slot` before its attempt and holds it for the whole answer,
a stream to its last chunk; when none is free it waits in the scheduler's queue:

- interactive first, near-real-time next, batch last;
- batch requests hold at most `batch_share` of the slots (and near-real-time and batch together at
  most `near_real_time_share`), so the more urgent classes always find room. Where the backend
  preempts batch sequences itself (a local engine, within a decode step), the slots batch requests
  hold do not count against the more urgent classes at all;
- within a class, the waiter of the tenant with the fewest slots per unit of weight goes first
  (weighted fair share), and a tenant's own waiters go in arrival order;
- a bounded queue (`max_queue`) refuses a newcomer with 503, unless the newcomer is more urgent, or its
  tenant is served less, than the last waiter of the most served tenant of the least urgent class:
  then that waiter is refused instead. One tenant cannot fill the waiting room either.

Pure asyncio on one event loop: no lock, no task, no timer unless a request waits; a deployment
without capacity is not scheduled at all (`limited` is false and the router never asks).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from backends.base import Backend
from backends.contract.errors import Overloaded
from backends.contract.priority import Priority, Scheduling
from routing.config import DeploymentConfig

log = logging.getLogger("llm_gateway.routing")

CLASSES = tuple(Priority)  # most urgent first


class QueueFull(Overloaded):
    """No slot in time: the queue was full, the wait ran out, or a more urgent request took the place.
    The deployment is healthy, only busy: no verdict for its breaker, and the router tries the next one."""

    counts_against_breaker = False

    def __init__(self, message: str, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)
        self.reason = reason  # full | timeout | evicted, for metrics


@dataclass(frozen=True)
class Limits:
    capacity: int | None = None  # slots; None: unlimited, nothing is scheduled
    batch_share: float = 0.5
    near_real_time_share: float = 1.0
    max_queue: int | None = None  # waiters at most; None: unbounded (the wait is still bounded in time)
    preempts_batch: bool = False  # the backend takes batch sequences' slots for urgent requests itself

    def caps(self) -> tuple[int, int, int]:
        """Slots for (every class, near-real-time and batch together, batch); each class gets at least one."""
        c = self.capacity or 0
        return c, max(1, math.floor(c * self.near_real_time_share + 1e-9)), max(1, math.floor(c * self.batch_share
                                                                                            + 1e-9))


def limits_for(config: DeploymentConfig, backend: Backend) -> Limits:
    """The deployment's own settings, else what its backend says it serves at once."""
    own = backend.capacity()
    capacity = config.max_concurrency or (own.slots if own else None)
    max_queue = config.max_queue if config.max_queue is not None else (own.queue if own else None)
    return Limits(capacity, config.batch_share, config.near_real_time_share, max_queue,
                  bool(own and own.preempts_batch))


class Slot:
    """A held slot of one scheduler, released exactly once (`release` is idempotent).

    The router releases it when the answer ends, however it ends; should a path ever drop it unreleased
    (a stream its client never started reading), the garbage collector's finalizer gives it back."""

    __slots__ = ("_owner", "priority", "tenant")

    def __init__(self, owner: Scheduler | None, priority: Priority, tenant: str) -> None:
        self._owner = owner
        self.priority = priority
        self.tenant = tenant

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self)

    def __del__(self) -> None:
        owner = self._owner
        if owner is None:
            return
        owner.dropped += 1
        loop = owner._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.release)  # a finalizer may run on any thread
        else:
            self.release()


NO_SLOT = Slot(None, Priority.INTERACTIVE, "-")  # what an unlimited deployment hands out: nothing to release


class _Waiter:
    __slots__ = ("future", "queued", "sched", "seq", "since")

    def __init__(self, sched: Scheduling, seq: int, future: asyncio.Future, since: float) -> None:
        self.sched = sched
        self.seq = seq
        self.future = future
        self.queued = True
        self.since = since


class Scheduler:
    def __init__(self, limits: Limits, name: str = "-") -> None:
        self.name = name
        self.limits = limits
        self._busy = [0, 0, 0]  # slots held, per class
        self._tenants: dict[str, int] = {}  # slots held, per tenant
        self._queues: list[dict[str, deque[_Waiter]]] = [{}, {}, {}]  # per class: tenant -> its waiters, in order
        self._waiting = [0, 0, 0]
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.granted = 0  # slots handed out
        self.waited = 0  # ... of which after a wait
        self.refused = {"full": 0, "timeout": 0, "evicted": 0}
        self.dropped = 0  # slots given back by the finalizer (a bug elsewhere if it grows)

    @property
    def limited(self) -> bool:
        return self.limits.capacity is not None

    def configure(self, limits: Limits) -> None:
        """New settings from a reload: slots held stay held; a larger capacity lets waiters in at once."""
        self.limits = limits
        self._dispatch()

    # -- taking and giving back ----------------------------------------------------------------------

    def try_acquire(self, sched: Scheduling) -> Slot | None:
        """A slot now, or None when `sched` would have to wait (its class is at its cap)."""
        if not self.limited:
            return NO_SLOT
        if not self._eligible(sched.priority):
            return None
        return self._grant(sched)

    def has_room(self, sched: Scheduling) -> bool:
        """Would `try_acquire` give a slot now? (Waiters of the same or a more urgent class mean no: by the
        time anyone looks, every waiter that could start has started.)"""
        return not self.limited or self._eligible(sched.priority)

    async def acquire(self, sched: Scheduling, timeout: float) -> Slot:
        """A slot, waiting up to `timeout` seconds; QueueFull when none came. A waiter cancelled (its
        client went away) leaves the queue, and a slot granted in that instant is given back."""
        slot = self.try_acquire(sched)
        if slot is not None:
            return slot
        loop = self._loop = asyncio.get_running_loop()
        k = sched.priority
        if self.limits.max_queue is not None and sum(self._waiting) >= self.limits.max_queue:
            victim = self._worst_waiter()
            if victim is None or not self._better(sched, victim):
                self.refused["full"] += 1
                raise self._full("full", f"{sum(self._waiting)} requests are waiting already")
            self._remove(victim)
            self.refused["evicted"] += 1
            victim.future.set_exception(self._full("evicted", "a more urgent or less served request took its "
                                                              "place in the queue"))
        waiter = _Waiter(sched, next(self._seq), loop.create_future(), loop.time())
        self._queues[k].setdefault(sched.tenant, deque()).append(waiter)
        self._waiting[k] += 1
        timer = loop.call_later(max(0.0, timeout), self._expire, waiter, timeout)
        try:
            slot = await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                waiter.future.result().release()  # granted as the waiter left
            self._remove(waiter)
            raise
        finally:
            timer.cancel()
        self.waited += 1
        return slot

    def _grant(self, sched: Scheduling) -> Slot:
        if self._loop is None:
            self._loop = _running_loop()
        self._busy[sched.priority] += 1
        self._tenants[sched.tenant] = self._tenants.get(sched.tenant, 0) + 1
        self.granted += 1
        return Slot(self, sched.priority, sched.tenant)

    def _release(self, slot: Slot) -> None:
        self._busy[slot.priority] -= 1
        held = self._tenants.get(slot.tenant, 0) - 1
        if held > 0:
            self._tenants[slot.tenant] = held
        else:
            self._tenants.pop(slot.tenant, None)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free slots to waiters, best first, until none can start."""
        while True:
            waiter = self._next()
            if waiter is None:
                return
            self._remove(waiter)
            if not waiter.future.done():  # one cancelled a moment ago is skipped
                waiter.future.set_result(self._grant(waiter.sched))

    # -- who goes next --------------------------------------------------------------------------------

    def _eligible(self, k: Priority) -> bool:
        """May a request of class `k` start now? Caps nest: a class counts itself and every less urgent one."""
        if not self.limited:
            return True
        n0, n1, n2 = self._busy
        every, later, batch = self.limits.caps()
        if k == Priority.BATCH:
            return n0 + n1 + n2 < every and n1 + n2 < later and n2 < batch
        held_batch = 0 if self.limits.preempts_batch else n2
        if n0 + n1 + held_batch >= every:
            return False
        return k == Priority.INTERACTIVE or n1 + held_batch < later

    def _next(self) -> _Waiter | None:
        """The waiter to serve first: the most urgent class that has waiters; if that class cannot start,
        no less urgent one can either. Within it, the tenant with the fewest slots per weight, then the
        earliest."""
        for k in CLASSES:
            queue = self._queues[k]
            if not queue:
                continue
            if not self._eligible(k):
                return None
            best = min(queue.values(), key=lambda w: (self._tenants.get(w[0].sched.tenant, 0) / _weight(w[0].sched),
                                                      w[0].seq))
            return best[0]
        return None

    def _load(self, tenant: str, k: Priority, weight: float) -> float:
        """A tenant's slots and waiters of class `k`, per weight: what the waiting room is shared out by."""
        return (self._tenants.get(tenant, 0) + len(self._queues[k].get(tenant, ()))) / weight

    def _worst_waiter(self) -> _Waiter | None:
        """The least urgent class's most served tenant's newest waiter: the first to give up its place."""
        for k in reversed(CLASSES):
            queue = self._queues[k]
            if queue:
                waiters = max(queue.values(), key=lambda w: (self._load(w[0].sched.tenant, k, _weight(w[0].sched)),
                                                             w[-1].seq))
                return waiters[-1]
        return None

    def _better(self, newcomer: Scheduling, victim: _Waiter) -> bool:
        """Should `newcomer` take `victim`'s place? More urgent, or the same class and served less even
        with itself counted."""
        v = victim.sched
        if newcomer.priority != v.priority:
            return newcomer.priority < v.priority
        k, w = newcomer.priority, _weight(newcomer)
        return self._load(newcomer.tenant, k, w) + 1 / w < self._load(v.tenant, k, _weight(v))

    def _remove(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        k = waiter.sched.priority
        queue = self._queues[k]
        mine = queue.get(waiter.sched.tenant)
        if mine is not None:
            mine.remove(waiter)
            if not mine:
                del queue[waiter.sched.tenant]
        self._waiting[k] -= 1

    def _expire(self, waiter: _Waiter, timeout: float) -> None:
        if waiter.queued and not waiter.future.done():
            self._remove(waiter)
            self.refused["timeout"] += 1
            waiter.future.set_exception(self._full("timeout", f"no slot became free within {timeout:.3g}s"))

    def _full(self, reason: str, why: str) -> QueueFull:
        return QueueFull(f"The deployment '{self.name}' is at capacity ({sum(self._busy)} requests in service); "
                         f"{why}. Retry shortly.", reason)

    # -- what the admin sees --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        _, later, batch = self.limits.caps()
        return {
            "capacity": self.limits.capacity,
            "in_service": {p.label: self._busy[p] for p in CLASSES},
            "waiting": {p.label: self._waiting[p] for p in CLASSES},
            "caps": {"near-real-time": later, "batch": batch},
            "max_queue": self.limits.max_queue,
            "preempts_batch": self.limits.preempts_batch,
            "tenants_in_service": len(self._tenants),
            "granted": self.granted,
            "waited": self.waited,
            "refused": dict(self.refused),
            "dropped": self.dropped,
        }

    def depth(self, k: Priority) -> int:
        return self._waiting[k]

    def in_service(self, k: Priority) -> int:
        return self._busy[k]


def _weight(sched: Scheduling) -> float:
    return sched.weight if sched.weight > 0 else 1.0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
