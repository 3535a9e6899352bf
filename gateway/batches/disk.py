"""Batch state on local disk, for a gateway without Redis: what it kept survives a restart (or a SIGKILL).

The state lives in memory, as in MemoryBatchStore, and every change is written through before the call
returns: file and batch objects and each batch's flags (active, cancel) as small JSON files, replaced
atomically (written to a temporary name, fsynced, renamed), and each batch's finished lines appended to
a journal (`lines/{batch_id}.jsonl`, one row a line, fsynced). A restarted gateway reads it all back:
the finished lines are what it recorded, so its runner queues only the others (none lost, none run twice
to completion). A row cut short by a crash is dropped and the journal truncated to its last whole row.
Disk work runs in threads, never on the event loop; writes to one file are serialized in call order.

One gateway process at a time: the directory is locked (flock); a second process that finds it locked
(`serve --workers N` without Redis) keeps its batches in memory, as before, and says so.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.batches.stores import Kind, MemoryBatchStore
from gateway.store_errors import StoreUnavailable

log = logging.getLogger("llm_gateway.batches")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class StateDirBusy(Exception):
    """Another process holds the state directory."""


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class DiskBatchStore(MemoryBatchStore):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        for sub in ("objects", "flags", "lines"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StateDirBusy(f"{root} is in use by another gateway process") from None
        self._journals: dict[str, int] = {}  # batch id -> its journal, open for appending
        self._io_locks = [asyncio.Lock() for _ in range(64)]  # one path, one lock (paths share a few)
        try:
            self._load()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # -- start-up ----------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read back what an earlier process kept (before the event loop runs: start-up only)."""
        now = time.time()
        for tmp in self.root.glob("*/*.tmp"):  # a write a crash cut short; its older version stands
            _unlink(tmp)
        for path in (self.root / "objects").glob("*.json"):
            try:
                doc = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                log.warning("batch state: %s is unreadable; skipped", path)
                continue
            if doc["until"] <= now:
                _unlink(path)
                continue
            self._objects[(doc["kind"], doc["obj"]["id"])] = (doc["obj"], doc["owner"], doc["until"])
        for path in (self.root / "flags").glob("*.json"):
            batch_id = path.stem
            if ("batch", batch_id) not in self._objects:
                _unlink(path)
                continue
            try:
                flags = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                log.warning("batch state: %s is unreadable; skipped", path)
                continue
            if flags.get("active"):
                self._active.add(batch_id)
            if flags.get("cancel") is not None:
                self._cancel[batch_id] = flags["cancel"]
        for path in (self.root / "lines").glob("*.jsonl"):
            if ("batch", path.stem) not in self._objects:
                _unlink(path)
                continue
            self._replay(path.stem, path)

    def _replay(self, batch_id: str, path: Path) -> None:
        data = path.read_bytes()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # the last row was cut short: drop it, so the next append starts clean
            log.warning("batch %s: dropped a partly written line record at the end of its journal", batch_id)
            os.truncate(path, len(whole))
        lines = self._lines.setdefault(batch_id, {})
        for raw in whole.splitlines():
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError:
                log.warning("batch %s: skipped an unreadable line record in its journal", batch_id)
                continue
            if row["c"] not in lines:
                lines[row["c"]] = row["l"]
                self._failed[batch_id] = self._failed.get(batch_id, 0) + int(row["f"])

    # -- writing through ---------------------------------------------------------------------------------

    def _path(self, sub: str, name: str, suffix: str) -> Path:
        if not _NAME.match(name):  # ids are ours, but a path is never built from anything else
            raise ValueError(f"not an object id: {name!r}")
        return self.root / sub / f"{name}{suffix}"

    async def _io(self, path: Path, fn: Any, *args: Any) -> None:
        """`fn(*args)` in a thread, after the earlier writes to `path` (so the last call's data stands)."""
        try:
            async with self._io_locks[hash(path) % len(self._io_locks)]:
                await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise StoreUnavailable(f"batch state on disk failed: {exc}") from exc

    async def put(self, kind: Kind, obj: dict[str, Any], owner: str, ttl_s: float) -> None:
        await super().put(kind, obj, owner, ttl_s)
        stored, _owner, until = self._objects[(kind, obj["id"])]
        doc = orjson.dumps({"kind": kind, "obj": stored, "owner": owner, "until": until})
        path = self._path("objects", f"{kind}-{obj['id']}", ".json")
        await self._io(path, _write_atomically, path, doc)

    async def delete(self, kind: Kind, obj_id: str, owner: str) -> None:
        await super().delete(kind, obj_id, owner)
        path = self._path("objects", f"{kind}-{obj_id}", ".json")
        await self._io(path, _unlink, path)

    async def record_line(self, batch_id: str, custom_id: str, line: dict[str, Any], failed: bool,
                          ttl_s: float) -> bool:
        if not await super().record_line(batch_id, custom_id, line, failed, ttl_s):
            return False
        row = orjson.dumps({"c": custom_id, "f": int(failed), "l": line}) + b"\n"
        path = self._path("lines", batch_id, ".jsonl")
        try:
            await self._io(path, self._append, batch_id, path, row)
        except StoreUnavailable:  # not kept: the caller retries, or another run records it
            self._lines[batch_id].pop(custom_id, None)
            self._failed[batch_id] -= int(failed)
            raise
        return True

    def _append(self, batch_id: str, path: Path, row: bytes) -> None:
        fd = self._journals.get(batch_id)
        if fd is None:
            fd = self._journals[batch_id] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, row)
        os.fsync(fd)

    async def cancel(self, batch_id: str, ttl_s: float) -> None:
        await super().cancel(batch_id, ttl_s)
        await self._write_flags(batch_id)

    async def activate(self, batch_id: str, active: bool) -> None:
        await super().activate(batch_id, active)
        await self._write_flags(batch_id)
        if not active:  # the batch is over: its journal is complete
            await self._io(self._path("lines", batch_id, ".jsonl"), self._close_journal, batch_id)

    def _close_journal(self, batch_id: str) -> None:
        fd = self._journals.pop(batch_id, None)
        if fd is not None:
            os.close(fd)

    async def _write_flags(self, batch_id: str) -> None:
        path = self._path("flags", batch_id, ".json")
        doc = orjson.dumps({"active": batch_id in self._active, "cancel": self._cancel.get(batch_id)})
        await self._io(path, _write_atomically, path, doc)

    async def aclose(self) -> None:
        for fd in self._journals.values():
            os.close(fd)
        self._journals.clear()
        os.close(self._lock_fd)  # and with it the lock
