"""File and batch objects, each batch's finished lines, cancel flags and the replicas' leases.

Objects belong to an owner (the key that created them; gateway.auth.Principal.owner) and are listed
newest first. A batch's finished lines are kept by `custom_id`, first write wins, so a line that two
replicas both finished (one of them about to die) is in the output once. A lease says which replica runs
a batch; it lapses when that replica stops renewing it, and any other may take the batch over.

In Redis (every replica sees the same, durable as Redis is), or in this process: in memory, written through
to local disk (gateway.batches.disk) so that it survives a restart. Redis failures are `StoreUnavailable`,
as everywhere.
"""

from __future__ import annotations

import abc
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson

from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio

Kind = Literal["file", "batch"]

_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  if ARGV[3] == '1' then redis.call('INCR', KEYS[2]) end
  redis.call('PEXPIRE', KEYS[1], ARGV[4]); redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class BatchStore(abc.ABC):
    """Everything the Files and Batch APIs keep, but file contents (gateway.batches.blobs)."""

    @abc.abstractmethod
    async def put(self, kind: Kind, obj: dict[str, Any], owner: str, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def get(self, kind: Kind, obj_id: str) -> tuple[dict[str, Any], str] | None:
        """(object, owner), or None."""

    @abc.abstractmethod
    async def list(self, kind: Kind, owner: str) -> list[dict[str, Any]]:
        """The owner's objects, newest first."""

    @abc.abstractmethod
    async def delete(self, kind: Kind, obj_id: str, owner: str) -> None: ...

    @abc.abstractmethod
    async def record_line(self, batch_id: str, custom_id: str, line: dict[str, Any], failed: bool,
                          ttl_s: float) -> bool:
        """Keep a finished line; False if that custom_id was finished already (the first one stands)."""

    @abc.abstractmethod
    async def lines(self, batch_id: str) -> dict[str, dict[str, Any]]: ...

    @abc.abstractmethod
    async def finished(self, batch_id: str) -> set[str]:
        """The custom_ids of the lines finished so far (without their rows)."""

    @abc.abstractmethod
    async def is_finished(self, batch_id: str, custom_id: str) -> bool: ...

    @abc.abstractmethod
    async def counts(self, batch_id: str) -> tuple[int, int]:
        """(finished lines, failed lines)."""

    @abc.abstractmethod
    async def cancel(self, batch_id: str, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def cancelled(self, batch_id: str) -> float | None:
        """When the batch was asked to cancel, if it was."""

    @abc.abstractmethod
    async def activate(self, batch_id: str, active: bool) -> None:
        """Put a batch on (or take it off) the list of batches with lines to run."""

    @abc.abstractmethod
    async def active(self) -> list[str]: ...

    @abc.abstractmethod
    async def lease(self, batch_id: str, holder: str, ttl_s: float) -> bool:
        """Take or renew `holder`'s lease on a batch; False when another replica holds it."""

    @abc.abstractmethod
    async def release(self, batch_id: str, holder: str) -> None: ...

    async def aclose(self) -> None:
        """Let go of what the store holds open (the disk store's files and lock)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBatchStore(BatchStore):
    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:") -> None:
        self.redis = redis
        self.p = prefix
        self._record = redis.register_script(_RECORD)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _key(self, kind: Kind, obj_id: str) -> str:
        return f"{self.p}{kind}:{obj_id}"

    async def put(self, kind: Kind, obj: dict[str, Any], owner: str, ttl_s: float) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._key(kind, obj["id"]), orjson.dumps({"obj": obj, "owner": owner}), px=_ms(ttl_s))
        pipe.zadd(f"{self.p}{kind}s:{owner}", {obj["id"]: obj.get("created_at", time.time())})
        await guard(pipe.execute())

    async def get(self, kind: Kind, obj_id: str) -> tuple[dict[str, Any], str] | None:
        raw = await guard(self.redis.get(self._key(kind, obj_id)))
        if raw is None:
            return None
        doc = orjson.loads(raw)
        return doc["obj"], doc["owner"]

    async def list(self, kind: Kind, owner: str) -> list[dict[str, Any]]:
        index = f"{self.p}{kind}s:{owner}"
        ids = await guard(self.redis.zrevrange(index, 0, -1))
        if not ids:
            return []
        raws = await guard(self.redis.mget([self._key(kind, i.decode() if isinstance(i, bytes) else i) for i in ids]))
        gone = [i for i, raw in zip(ids, raws) if raw is None]
        if gone:  # expired objects leave the index too
            await guard(self.redis.zrem(index, *gone))
        return [orjson.loads(raw)["obj"] for raw in raws if raw is not None]

    async def delete(self, kind: Kind, obj_id: str, owner: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self._key(kind, obj_id))
        pipe.zrem(f"{self.p}{kind}s:{owner}", obj_id)
        await guard(pipe.execute())

    async def record_line(self, batch_id: str, custom_id: str, line: dict[str, Any], failed: bool,
                          ttl_s: float) -> bool:
        keys = [f"{self.p}batch:{batch_id}:lines", f"{self.p}batch:{batch_id}:failed"]
        done = await guard(self._record(keys=keys, args=[custom_id, orjson.dumps(line), "1" if failed else "0",
                                                          _ms(ttl_s)]))
        return bool(done)

    async def lines(self, batch_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        cursor = 0
        while True:  # a page at a time: 50,000 lines in one reply would outlast the socket timeout
            cursor, page = await guard(self.redis.hscan(f"{self.p}batch:{batch_id}:lines", cursor, count=500))
            out.update({_text(k): orjson.loads(v) for k, v in page.items()})
            if not cursor:
                return out

    async def finished(self, batch_id: str) -> set[str]:
        return {_text(k) for k in await guard(self.redis.hkeys(f"{self.p}batch:{batch_id}:lines"))}

    async def is_finished(self, batch_id: str, custom_id: str) -> bool:
        return bool(await guard(self.redis.hexists(f"{self.p}batch:{batch_id}:lines", custom_id)))

    async def counts(self, batch_id: str) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hlen(f"{self.p}batch:{batch_id}:lines")
        pipe.get(f"{self.p}batch:{batch_id}:failed")
        done, failed = await guard(pipe.execute())
        return int(done), int(failed or 0)

    async def cancel(self, batch_id: str, ttl_s: float) -> None:
        await guard(self.redis.set(f"{self.p}batch:{batch_id}:cancel", str(time.time()), nx=True, px=_ms(ttl_s)))

    async def cancelled(self, batch_id: str) -> float | None:
        raw = await guard(self.redis.get(f"{self.p}batch:{batch_id}:cancel"))
        return float(raw) if raw is not None else None

    async def activate(self, batch_id: str, active: bool) -> None:
        key = f"{self.p}batches:active"
        await guard(self.redis.sadd(key, batch_id) if active else self.redis.srem(key, batch_id))

    async def active(self) -> list[str]:
        return sorted(_text(i) for i in await guard(self.redis.smembers(f"{self.p}batches:active")))

    async def lease(self, batch_id: str, holder: str, ttl_s: float) -> bool:
        key = f"{self.p}batch:{batch_id}:lease"
        if await guard(self.redis.set(key, holder, nx=True, px=_ms(ttl_s))):
            return True
        return bool(await guard(self._renew(keys=[key], args=[holder, _ms(ttl_s)])))

    async def release(self, batch_id: str, holder: str) -> None:
        await guard(self._release(keys=[f"{self.p}batch:{batch_id}:lease"], args=[holder]))


class MemoryBatchStore(BatchStore):
    """This process only: one replica, and nothing survives a restart (DiskBatchStore keeps it on disk)."""

    def __init__(self) -> None:
        self._objects: dict[tuple[Kind, str], tuple[dict[str, Any], str, float]] = {}
        self._lines: dict[str, dict[str, dict[str, Any]]] = {}
        self._failed: dict[str, int] = {}
        self._cancel: dict[str, float] = {}
        self._active: set[str] = set()

    async def put(self, kind: Kind, obj: dict[str, Any], owner: str, ttl_s: float) -> None:
        self._objects[(kind, obj["id"])] = (orjson.loads(orjson.dumps(obj)), owner, time.time() + ttl_s)

    async def get(self, kind: Kind, obj_id: str) -> tuple[dict[str, Any], str] | None:
        item = self._objects.get((kind, obj_id))
        if item is None or item[2] <= time.time():
            return None
        return orjson.loads(orjson.dumps(item[0])), item[1]

    async def list(self, kind: Kind, owner: str) -> list[dict[str, Any]]:
        now = time.time()
        found = [obj for (k, _), (obj, who, until) in self._objects.items() if k == kind and who == owner and until > now]
        return sorted(found, key=lambda o: o.get("created_at", 0), reverse=True)

    async def delete(self, kind: Kind, obj_id: str, owner: str) -> None:
        self._objects.pop((kind, obj_id), None)

    async def record_line(self, batch_id: str, custom_id: str, line: dict[str, Any], failed: bool,
                          ttl_s: float) -> bool:
        lines = self._lines.setdefault(batch_id, {})
        if custom_id in lines:
            return False
        lines[custom_id] = line
        self._failed[batch_id] = self._failed.get(batch_id, 0) + int(failed)
        return True

    async def lines(self, batch_id: str) -> dict[str, dict[str, Any]]:
        return dict(self._lines.get(batch_id, {}))

    async def finished(self, batch_id: str) -> set[str]:
        return set(self._lines.get(batch_id, ()))

    async def is_finished(self, batch_id: str, custom_id: str) -> bool:
        return custom_id in self._lines.get(batch_id, ())

    async def counts(self, batch_id: str) -> tuple[int, int]:
        return len(self._lines.get(batch_id, {})), self._failed.get(batch_id, 0)

    async def cancel(self, batch_id: str, ttl_s: float) -> None:
        self._cancel.setdefault(batch_id, time.time())

    async def cancelled(self, batch_id: str) -> float | None:
        return self._cancel.get(batch_id)

    async def activate(self, batch_id: str, active: bool) -> None:
        (self._active.add if active else self._active.discard)(batch_id)

    async def active(self) -> list[str]:
        return sorted(self._active)

    async def lease(self, batch_id: str, holder: str, ttl_s: float) -> bool:
        return True

    async def release(self, batch_id: str, holder: str) -> None:
        return None


