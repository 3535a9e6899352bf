"""In-process LRU for the response cache when no Redis is configured.

Entries are kept as the same serialized bytes Redis would hold, so a caller
that mutates a returned body can't corrupt the cache, and size limits mean the
same thing in both modes. Expiry is lazy (checked on get) plus LRU eviction on
put, both O(1); a single event loop owns it, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict


class MemoryLRU:
    """Key -> (expires_at wall-clock seconds, payload bytes), least recently used first."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str, now: float | None = None) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires_at, payload = item
        if (time.time() if now is None else now) >= expires_at:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return payload

    def put(self, key: str, payload: bytes, expires_at: float) -> None:
        self._data[key] = (expires_at, payload)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def delete(self, key: str) -> bool:
        return self._data.pop(key, None) is not None

    def clear(self) -> None:
        self._data.clear()
