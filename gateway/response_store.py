"""Stored responses of the Responses API (`store: true`), for `previous_response_id`, GET and DELETE.

A record holds the `response` object, the conversation that led to it (chat messages, without the
instructions) and its owner: the API key that made it. Only that key (or the master key) may read,
continue or delete it; to any other caller it does not exist. Redis keeps records for every replica
(prefix + "response:" + id, with a TTL); without Redis they live in this process, bounded. A Redis
failure is `StoreUnavailable`, and the caller decides (a 503 for a read the request depends on).
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.cache_memory import MemoryLRU
from gateway.store_errors import guard

if TYPE_CHECKING:
    import redis.asyncio


@dataclass
class StoredResponse:
    response: dict[str, Any]
    conversation: list[dict[str, Any]]  # chat messages: the inputs so far and this response's output
    owner: str
    input_items: list[dict[str, Any]] = field(default_factory=list)  # this request's input, as items

    def encode(self) -> bytes:
        return orjson.dumps({"response": self.response, "conversation": self.conversation, "owner": self.owner,
                             "input_items": self.input_items})

    @classmethod
    def decode(cls, raw: bytes | str | None) -> "StoredResponse | None":
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            return cls(doc["response"], doc["conversation"], doc["owner"], doc.get("input_items") or [])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None  # a foreign or corrupt value is no response


class ResponseStore(abc.ABC):
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def redis_key(self, response_id: str) -> str:
        return f"{self.prefix}response:{response_id}"

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        """The record, if it exists and belongs to `owner`."""
        record = StoredResponse.decode(await self._get(response_id))
        return record if record is not None and record.owner == owner else None

    async def delete(self, response_id: str, owner: str) -> bool:
        """True if `owner`'s record existed and is gone now."""
        if await self.get(response_id, owner) is None:
            return False
        await self._delete(response_id)
        return True

    @abc.abstractmethod
    async def put(self, response_id: str, record: StoredResponse, ttl_s: float) -> None: ...

    @abc.abstractmethod
    async def _get(self, response_id: str) -> bytes | None: ...

    @abc.abstractmethod
    async def _delete(self, response_id: str) -> None: ...


class RedisResponseStore(ResponseStore):
    def __init__(self, redis: redis.asyncio.Redis, prefix: str = "gw:", timeout_s: float | None = None) -> None:
        super().__init__(prefix)
        self.redis = redis
        self.timeout_s = timeout_s

    async def put(self, response_id: str, record: StoredResponse, ttl_s: float) -> None:
        await guard(self.redis.set(self.redis_key(response_id), record.encode(), px=max(1, int(ttl_s * 1000))),
                    self.timeout_s)

    async def _get(self, response_id: str) -> bytes | None:
        return await guard(self.redis.get(self.redis_key(response_id)), self.timeout_s)

    async def _delete(self, response_id: str) -> None:
        await guard(self.redis.delete(self.redis_key(response_id)), self.timeout_s)


class MemoryResponseStore(ResponseStore):
    def __init__(self, prefix: str = "gw:", max_entries: int = 10_000) -> None:
        super().__init__(prefix)
        self._lru = MemoryLRU(max_entries)

    async def put(self, response_id: str, record: StoredResponse, ttl_s: float) -> None:
        self._lru.put(response_id, record.encode(), time.time() + ttl_s)

    async def _get(self, response_id: str) -> bytes | None:
        return self._lru.get(response_id)

    async def _delete(self, response_id: str) -> None:
        self._lru.delete(response_id)


def response_store(redis: redis.asyncio.Redis | None, prefix: str = "gw:", max_entries: int = 10_000) -> ResponseStore:
    """Redis when configured, else this process's memory."""
    if redis is None:
        return MemoryResponseStore(prefix, max_entries)
    return RedisResponseStore(redis, prefix)
