"""`max_concurrent_requests` of keys and routes: requests in flight at once, on every replica together.

A subject (`key:<id>`, `route:<name>`) holds at most `limit` requests. A request beyond it waits (more
urgent classes first, then in arrival order) until one finishes or its wait runs out; the caller then
answers 429. The place is held to the answer's end, a stream's last chunk included (the request
record releases it, gateway/observe.py).

With Redis the count is shared: each holder is an entry of a sorted set scored by when it expires,
renewed while its request runs, so a dead replica's holders free their places within `HOLD_TTL_MS`;
waiters queue in a second sorted set (by class, then arrival), each renewed at every poll. One script
admits, queues or refuses atomically, on Redis's clock. A waiter polls every `POLL_S`, and at once when a
request of this replica finishes. Without Redis, the in-process twin counts this process alone. A Redis
that cannot be asked lets the request in (fail open, as rate limits do).
"""

from __future__ import annotations

import abc
import asyncio
import heapq
import itertools
import logging
import random
import time
import uuid
from typing import TYPE_CHECKING, Any, Coroutine

from backends.contract.priority import Priority
from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("llm_gateway.concurrency")

HOLD_TTL_MS = 30_000  # a holder outlives its (dead) replica by this at most; renewed every third of it
WAIT_TTL_MS = 2_000  # a waiter's place outlives its replica by this at most; renewed at every poll
POLL_S = 0.05


class WaitedTooLong(Exception):
    """No place came free within the wait."""


class Hold:
    """One request's place under a subject's limit, given back exactly once (`release` is idempotent)."""

    __slots__ = ("_owner", "member", "subject")

    def __init__(self, owner: ConcurrencyLimiter | None, subject: str, member: str) -> None:
        self._owner = owner
        self.subject = subject
        self.member = member

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self)

    def __del__(self) -> None:  # a path that dropped it unreleased: give it back, from the loop's thread
        owner = self._owner
        if owner is not None and owner._loop is not None and not owner._loop.is_closed():
            owner._loop.call_soon_threadsafe(self.release)


class ConcurrencyLimiter(abc.ABC):
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    @abc.abstractmethod
    async def acquire(self, subject: str, limit: int, priority: Priority, timeout: float) -> Hold:
        """A place under `limit`, waiting up to `timeout` seconds (WaitedTooLong); StoreUnavailable when
        Redis cannot be asked (the caller lets the request in)."""

    @abc.abstractmethod
    def _release(self, hold: Hold) -> None: ...

    def held(self, subject: str) -> int:
        """Places this process holds under `subject` (admin, tests)."""
        return 0


class MemoryConcurrency(ConcurrencyLimiter):
    """This process alone: exact, and with no awaits but the wait itself."""

    def __init__(self) -> None:
        super().__init__()
        self._held: dict[str, int] = {}
        self._limits: dict[str, int] = {}
        self._waiters: dict[str, list[tuple[int, int, asyncio.Future]]] = {}  # heap of (class, seq, future)
        self._seq = itertools.count()

    async def acquire(self, subject: str, limit: int, priority: Priority, timeout: float) -> Hold:
        self._loop = asyncio.get_running_loop()
        self._limits[subject] = limit
        if self._held.get(subject, 0) < limit and not self._waiters.get(subject):
            return self._grant(subject)
        future: asyncio.Future = self._loop.create_future()
        heapq.heappush(self._waiters.setdefault(subject, []), (int(priority), next(self._seq), future))
        self._wake(subject)  # places a waiter that left did not hand on
        try:
            return await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise WaitedTooLong() from None
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                future.result().release()
            raise
        finally:
            self._wake(subject)  # a waiter that left may have been the one in the way

    def _grant(self, subject: str) -> Hold:
        self._held[subject] = self._held.get(subject, 0) + 1
        return Hold(self, subject, "-")

    def _release(self, hold: Hold) -> None:
        held = self._held.get(hold.subject, 0) - 1
        if held > 0:
            self._held[hold.subject] = held
        else:
            self._held.pop(hold.subject, None)
        self._wake(hold.subject)

    def _wake(self, subject: str) -> None:
        waiters = self._waiters.get(subject)
        while waiters and self._held.get(subject, 0) < self._limits.get(subject, 0):
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(self._grant(subject))
        while waiters and waiters[0][2].done():
            heapq.heappop(waiters)
        if not waiters:
            self._waiters.pop(subject, None)

    def held(self, subject: str) -> int:
        return self._held.get(subject, 0)


# KEYS: holders (member -> expiry ms), waiters (member -> class * 1e13 + arrival ms), waiters' expiries.
# ARGV: member, limit, hold ttl ms, class, wait ttl ms. Returns 1 (holding now) or 0 (waiting).
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function num(x) return string.format('%.17g', x) end
local me, limit, hold_ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local class, wait_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', num(now))
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', num(now))
if #gone > 0 then
  redis.call('ZREM', KEYS[2], unpack(gone))
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', num(now))
end
local free = limit - redis.call('ZCARD', KEYS[1])
local score = redis.call('ZSCORE', KEYS[2], me)
local ahead
if score then
  ahead = redis.call('ZRANK', KEYS[2], me)
else
  score = num(class * 1e13 + now)
  ahead = redis.call('ZCOUNT', KEYS[2], '-inf', '(' .. score)
end
if free > ahead then
  redis.call('ZADD', KEYS[1], num(now + hold_ttl), me)
  redis.call('ZREM', KEYS[2], me)
  redis.call('ZREM', KEYS[3], me)
  redis.call('PEXPIRE', KEYS[1], hold_ttl * 2)
  return 1
end
redis.call('ZADD', KEYS[2], score, me)
redis.call('ZADD', KEYS[3], num(now + wait_ttl), me)
redis.call('PEXPIRE', KEYS[2], wait_ttl * 2)
redis.call('PEXPIRE', KEYS[3], wait_ttl * 2)
return 0
"""

# KEYS: holders sets, one per member. ARGV: hold ttl ms, then the members. Only entries still there.
_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', string.format('%.17g', now + ttl), ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return 1
"""


class RedisConcurrency(ConcurrencyLimiter):
    """Shared by every replica; see the module's docstring."""

    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:", timeout_s: float | None = None) -> None:
        super().__init__()
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout_s
        self._acquire_script = redis.register_script(_ACQUIRE_LUA)
        self._renew_script = redis.register_script(_RENEW_LUA)
        self._mine: dict[str, Hold] = {}  # member -> hold, for renewal
        self._renewer: asyncio.Task | None = None
        self._wakers: dict[str, asyncio.Event] = {}
        self._chores: set[asyncio.Task] = set()

    def _keys(self, subject: str) -> list[str]:
        base = f"{self._prefix}cc:{subject}"
        return [f"{base}:h", f"{base}:w", f"{base}:x"]

    async def acquire(self, subject: str, limit: int, priority: Priority, timeout: float) -> Hold:
        self._loop = asyncio.get_running_loop()
        member = uuid.uuid4().hex[:20]
        keys = self._keys(subject)
        deadline = time.monotonic() + timeout
        try:
            while True:
                granted = await guard(self._acquire_script(keys=keys, args=[member, limit, HOLD_TTL_MS, int(priority),
                                                                             WAIT_TTL_MS]), self._timeout)
                if int(granted):
                    return self._hold(subject, member)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitedTooLong()
                waker = self._wakers.setdefault(subject, asyncio.Event())
                try:
                    await asyncio.wait_for(waker.wait(), min(left, POLL_S * (0.8 + 0.4 * random.random())))
                except asyncio.TimeoutError:
                    pass
        except BaseException:
            # Gone from the queue at once (and from the holders, should a grant have been in flight).
            self._later(self._forget(keys, member))
            raise

    def _hold(self, subject: str, member: str) -> Hold:
        hold = Hold(self, subject, member)
        self._mine[member] = hold
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="concurrency-renew")
        return hold

    def _release(self, hold: Hold) -> None:
        self._mine.pop(hold.member, None)
        self._later(self._forget(self._keys(hold.subject), hold.member))
        waker = self._wakers.pop(hold.subject, None)
        if waker is not None:
            waker.set()  # this replica's waiters ask again now

    async def _forget(self, keys: list[str], member: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys[0], member)
                pipe.zrem(keys[1], member)
                pipe.zrem(keys[2], member)
                await guard(pipe.execute(), self._timeout)
        except Exception as exc:  # the entry expires on its own
            log.debug("concurrency: could not release %s (%s)", member, exc)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in a task of its own: releases happen where no await is possible (a finished stream)."""
        try:
            task = asyncio.get_running_loop().create_task(work)
        except RuntimeError:  # no loop (shutdown): the entry expires on its own
            work.close()
            return
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _renew_loop(self) -> None:
        """Keep this replica's holders alive while their requests run; ends when it holds none."""
        while self._mine:
            await asyncio.sleep(HOLD_TTL_MS / 3000)
            members = list(self._mine.values())
            if not members:
                return
            try:
                await guard(self._renew_script(keys=[self._keys(h.subject)[0] for h in members],
                                               args=[HOLD_TTL_MS, *(h.member for h in members)]), self._timeout)
            except Exception as exc:
                log.warning("concurrency: could not renew %d holders (%s)", len(members), exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()

    def held(self, subject: str) -> int:
        return sum(1 for h in self._mine.values() if h.subject == subject)


def concurrency_limiter(redis: redis.asyncio.Redis | None, prefix: str = "gw:",
                        timeout_s: float | None = None) -> ConcurrencyLimiter:
    """The Redis limiter when there is a client, else the in-process one."""
    return MemoryConcurrency() if redis is None else RedisConcurrency(redis, prefix, timeout_s)
