"""The batches' work queue: each batch's lines, queued once, taken by whichever replica has a free slot.

A line is named by its index in the batch's input file (the bodies stay in the file; every replica parses it
once). A replica `take`s new lines, and each stays pending under that replica's name until it is `ack`ed
(recorded, or skipped). While it runs, the replica `keep`s it (a heartbeat every few seconds); a line that
nobody kept for `idle_s` belongs to a replica that died or hung, and any replica may `reclaim` it. A line a
replica gives back (shutting down) is free for the others at once.

With Redis: one stream per batch (`{prefix}batch:{id}:q`) and one consumer group, every replica a consumer.
The entry id is `0-{index + 1}`, so queueing is idempotent: Redis refuses an id at or below the stream's
last, and a coordinator that died half-way through queueing resumes after the last line queued without
queueing any twice. Without Redis, the same in this process (one replica: reclaim only matters for lines
given back).
"""

from __future__ import annotations

import abc
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from gateway.store_errors import StoreUnavailable, guard

if TYPE_CHECKING:
    import redis.asyncio

GROUP = "runners"
CHUNK = 1000  # entries per round trip when queueing a large batch
_FAR_IDLE_MS = 10 ** 12  # what a line given back looks like: idle for ages, so the next reclaim takes it

# The heartbeat: reset the idle time of the lines still pending under this consumer, and only those (a plain
# XCLAIM would also take back a line another replica reclaimed from us while we stalled: both would run it).
_KEEP = """
local kept = {}
for i, id in ipairs(ARGV) do
  if i > 2 then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if p[1] and p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
      kept[#kept + 1] = id
    end
  end
end
return kept
"""


def _entry(index: int) -> str:
    return f"0-{index + 1}"


def _index(entry: bytes | str) -> int:
    text = entry.decode() if isinstance(entry, bytes) else entry
    return int(text.rpartition("-")[2]) - 1


class WorkQueue(abc.ABC):
    @abc.abstractmethod
    async def enqueue(self, batch_id: str, indices: Sequence[int], ttl_s: float) -> None:
        """Queue these lines (ascending) unless the batch's queue is complete already; never one twice."""

    @abc.abstractmethod
    async def queued(self, batch_id: str) -> bool:
        """Whether the batch's lines were all queued (a coordinator taking over skips queueing)."""

    @abc.abstractmethod
    async def take(self, batch_id: str, consumer: str, count: int) -> list[int]:
        """Up to `count` lines nobody took yet, now pending under `consumer`."""

    @abc.abstractmethod
    async def reclaim(self, batch_id: str, consumer: str, idle_s: float, count: int) -> list[int]:
        """Up to `count` pending lines nobody kept for `idle_s` (their replica died), now `consumer`'s."""

    @abc.abstractmethod
    async def keep(self, batch_id: str, consumer: str, indices: Iterable[int]) -> list[int]:
        """The heartbeat of `consumer`'s running lines; those still its own (not reclaimed by another)."""

    @abc.abstractmethod
    async def give_back(self, batch_id: str, consumer: str, indices: Iterable[int]) -> None:
        """Lines `consumer` took and will not run (it stops): the next reclaim anywhere takes them."""

    @abc.abstractmethod
    async def ack(self, batch_id: str, indices: Iterable[int]) -> None:
        """Done with these lines (recorded, or skipped): they are no longer pending."""

    @abc.abstractmethod
    async def pending(self, batch_id: str) -> int:
        """How many lines are taken and not acknowledged (running, or left by a replica that died)."""

    @abc.abstractmethod
    async def drop(self, batch_id: str) -> None:
        """Forget the batch's queue (it is over)."""


def _decoded(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _unless(reply: str, aw: Any, default: Any) -> Any:
    """`aw`'s result, or `default` when Redis answers the error `reply` (NOGROUP: no queue, BUSYGROUP: one
    already)."""
    try:
        return await guard(aw)
    except StoreUnavailable as exc:
        if isinstance(exc.__cause__, ResponseError) and str(exc.__cause__).startswith(reply):
            return default
        raise


class RedisWorkQueue(WorkQueue):
    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:") -> None:
        self.redis = redis
        self.p = prefix
        self._keep = redis.register_script(_KEEP)

    def _stream(self, batch_id: str) -> str:
        return f"{self.p}batch:{batch_id}:q"

    def _flag(self, batch_id: str) -> str:
        return f"{self.p}batch:{batch_id}:queued"

    async def enqueue(self, batch_id: str, indices: Sequence[int], ttl_s: float) -> None:
        if await self.queued(batch_id):
            return
        stream, ttl_ms = self._stream(batch_id), max(1, int(ttl_s * 1000))
        # The group exists when an earlier coordinator began queueing.
        await _unless("BUSYGROUP", self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True), None)
        last = await guard(self.redis.xrevrange(stream, count=1))
        after = _index(last[0][0]) if last else -1
        todo = [i for i in indices if i > after]
        for start in range(0, len(todo), CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for i in todo[start:start + CHUNK]:
                pipe.xadd(stream, {"i": i}, id=_entry(i))
            for result in await guard(pipe.execute(raise_on_error=False)):
                # Another coordinator queueing the same lines at once: Redis kept the first of each.
                if isinstance(result, Exception) and "equal or smaller" not in str(result):
                    raise result
        pipe = self.redis.pipeline(transaction=False)
        pipe.pexpire(stream, ttl_ms)
        pipe.set(self._flag(batch_id), len(indices), px=ttl_ms)
        await guard(pipe.execute())

    async def queued(self, batch_id: str) -> bool:
        return bool(await guard(self.redis.exists(self._flag(batch_id))))

    async def take(self, batch_id: str, consumer: str, count: int) -> list[int]:
        found = await _unless("NOGROUP", self.redis.xreadgroup(GROUP, consumer, {self._stream(batch_id): ">"},
                                                               count=count), [])  # not queued yet, or over
        return [_index(entry) for _stream, entries in found or [] for entry, _fields in entries]

    async def reclaim(self, batch_id: str, consumer: str, idle_s: float, count: int) -> list[int]:
        out: list[int] = []
        cursor: Any = "0-0"
        for _ in range(16):  # each call scans at most 10 x count pending entries; a few calls cover the rest
            reply = await _unless("NOGROUP", self.redis.xautoclaim(self._stream(batch_id), GROUP, consumer,
                                                                   max(1, int(idle_s * 1000)), cursor,
                                                                   count=count - len(out)), None)
            if reply is None:
                return out
            cursor, claimed = reply[0], reply[1]
            out.extend(_index(entry) for entry, _fields in claimed)
            if len(out) >= count or _decoded(cursor) == "0-0":
                return out
        return out

    async def keep(self, batch_id: str, consumer: str, indices: Iterable[int]) -> list[int]:
        ids = [_entry(i) for i in indices]
        if not ids:
            return []
        kept = await guard(self._keep(keys=[self._stream(batch_id)], args=[GROUP, consumer, *ids]))
        return [_index(e) for e in kept]

    async def give_back(self, batch_id: str, consumer: str, indices: Iterable[int]) -> None:
        ids = [_entry(i) for i in indices]
        if ids:
            await guard(self.redis.xclaim(self._stream(batch_id), GROUP, consumer, 0, ids, idle=_FAR_IDLE_MS,
                                          justid=True))

    async def ack(self, batch_id: str, indices: Iterable[int]) -> None:
        ids = [_entry(i) for i in indices]
        if ids:
            await guard(self.redis.xack(self._stream(batch_id), GROUP, *ids))

    async def pending(self, batch_id: str) -> int:
        summary = await _unless("NOGROUP", self.redis.xpending(self._stream(batch_id), GROUP), {"pending": 0})
        return int(summary["pending"])

    async def drop(self, batch_id: str) -> None:
        await guard(self.redis.delete(self._stream(batch_id), self._flag(batch_id)))


@dataclass
class _Queue:
    new: deque[int] = field(default_factory=deque)
    pending: dict[int, tuple[str, float]] = field(default_factory=dict)  # index -> (consumer, last kept)


class MemoryWorkQueue(WorkQueue):
    """This process only; nothing to persist: a restarted gateway queues again the lines not recorded."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    async def enqueue(self, batch_id: str, indices: Sequence[int], ttl_s: float) -> None:
        if batch_id not in self._queues:
            self._queues[batch_id] = _Queue(deque(indices))

    async def queued(self, batch_id: str) -> bool:
        return batch_id in self._queues

    async def take(self, batch_id: str, consumer: str, count: int) -> list[int]:
        q = self._queues.get(batch_id)
        out: list[int] = []
        while q is not None and q.new and len(out) < count:
            out.append(q.new.popleft())
            q.pending[out[-1]] = (consumer, time.monotonic())
        return out

    async def reclaim(self, batch_id: str, consumer: str, idle_s: float, count: int) -> list[int]:
        q = self._queues.get(batch_id)
        if q is None:
            return []
        now = time.monotonic()
        out = [i for i, (_who, kept) in q.pending.items() if now - kept >= idle_s][:count]
        for i in out:
            q.pending[i] = (consumer, now)
        return out

    async def keep(self, batch_id: str, consumer: str, indices: Iterable[int]) -> list[int]:
        q = self._queues.get(batch_id)
        if q is None:
            return []
        now, kept = time.monotonic(), []
        for i in indices:
            if q.pending.get(i, ("",))[0] == consumer:
                q.pending[i] = (consumer, now)
                kept.append(i)
        return kept

    async def give_back(self, batch_id: str, consumer: str, indices: Iterable[int]) -> None:
        q = self._queues.get(batch_id)
        for i in indices if q is not None else ():
            if q.pending.get(i, ("",))[0] == consumer:
                q.pending[i] = (consumer, float("-inf"))

    async def ack(self, batch_id: str, indices: Iterable[int]) -> None:
        q = self._queues.get(batch_id)
        for i in indices if q is not None else ():
            q.pending.pop(i, None)

    async def pending(self, batch_id: str) -> int:
        q = self._queues.get(batch_id)
        return 0 if q is None else len(q.pending)

    async def drop(self, batch_id: str) -> None:
        self._queues.pop(batch_id, None)


def work_queue(redis: redis.asyncio.Redis | None, prefix: str = "gw:") -> WorkQueue:
    return MemoryWorkQueue() if redis is None else RedisWorkQueue(redis, prefix)
