"""A worker's connection to one engine process: submit jobs, read their events, notice a death at once.

Everything runs on the event loop and nothing blocks on the channel: writes
go into the transport's buffer, and one reader task turns incoming bytes
into messages and hands each to its job's queue. When the connection ends
(the engine died, or was stopped), every job still open gets a `LOST` event
in the same instant, so no request waits for an answer that cannot come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

from backends.llamacpp import wire

log = logging.getLogger("llm_gateway.llamacpp")

LOST = -1  # a local event, never on the wire: [LOST, job_id, reason]
_LAST = (wire.END, wire.ERROR, wire.FULL, LOST)  # events after which a job is over


class JobHandle:
    """One submitted job: its events arrive on `events` as the wire's messages ([op, job_id, ...])."""

    __slots__ = ("id", "events", "_client", "over")

    def __init__(self, job_id: int, client: EngineClient) -> None:
        self.id = job_id
        self.events: asyncio.Queue[list[Any]] = asyncio.Queue()
        self._client = client
        self.over = False

    def cancel(self) -> None:
        """Stop it (within one token) unless it is over already; its queue gets no more events."""
        if not self.over:
            self.over = True
            self._client._cancel(self.id)


class EngineClient:
    def __init__(self, name: str, on_lost: Callable[[EngineClient], None] | None = None) -> None:
        self.name = name
        self.info: dict[str, Any] = {}  # the engine's HELLO
        self.stats: dict[str, Any] = {}  # its latest STATS
        self.generation = 0  # the supervisor's generation of the process we are connected to
        self.in_flight = 0
        self._on_lost = on_lost
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._jobs: dict[int, JobHandle] = {}
        self._next_id = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    @property
    def load(self) -> float:
        """Jobs on this engine: our own in flight, or the engine's count over every worker if higher."""
        return float(max(self.in_flight, self.stats.get("load", 0)))

    async def connect(self, socket_path: str, generation: int, timeout: float = 5.0) -> None:
        """Connect and read the engine's HELLO; raises OSError (or TimeoutError) when it is not there."""
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path), timeout)
        messages = wire.Reader()
        hello: list[Any] | None = None
        pending: list[list[Any]] = []
        while hello is None:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                writer.close()
                raise ConnectionResetError("the engine closed the connection before its HELLO")
            for msg in messages.feed(data):
                if hello is None and msg[0] == wire.HELLO:
                    hello = msg
                else:
                    pending.append(msg)
        self.info = hello[1]
        self.generation = generation
        self._writer = writer
        for msg in pending:
            self._dispatch(msg)
        self._reader_task = asyncio.create_task(self._read(reader, messages, writer), name=f"engine-read-{self.name}")

    def submit(self, spec: dict[str, Any]) -> JobHandle:
        if not self.connected:
            raise ConnectionResetError(f"engine {self.name} is not connected")
        self._next_id += 1
        handle = JobHandle(self._next_id, self)
        self._jobs[handle.id] = handle
        self.in_flight += 1
        self._writer.write(wire.pack(wire.SUBMIT, handle.id, spec))  # type: ignore[union-attr]
        return handle

    def _cancel(self, job_id: int) -> None:
        if self._jobs.pop(job_id, None) is not None:
            self.in_flight -= 1
            if self.connected:
                self._writer.write(wire.pack(wire.CANCEL, job_id))  # type: ignore[union-attr]

    def _dispatch(self, msg: list[Any]) -> None:
        op = msg[0]
        if op == wire.STATS:
            self.stats = msg[1]
            return
        handle = self._jobs.get(msg[1])
        if handle is None:
            return  # a job we cancelled: its last events are of no interest
        if op in _LAST:
            del self._jobs[msg[1]]
            self.in_flight -= 1
            handle.over = True
        handle.events.put_nowait(msg)

    async def _read(self, reader: asyncio.StreamReader, messages: wire.Reader, writer: asyncio.StreamWriter) -> None:
        reason = "the engine process closed its connection"
        try:
            while data := await reader.read(65536):
                for msg in messages.feed(data):
                    self._dispatch(msg)
        except (ConnectionError, OSError) as exc:
            reason = f"the connection to the engine broke ({exc})"
        except ValueError as exc:  # not our protocol: treat as a broken engine
            reason = f"the engine sent garbage ({exc})"
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            self._fail_all(reason)
        if self._on_lost is not None:
            self._on_lost(self)

    def _fail_all(self, reason: str) -> None:
        jobs, self._jobs = self._jobs, {}
        self.in_flight = 0
        self.stats = {}
        for handle in jobs.values():
            handle.over = True
            handle.events.put_nowait([LOST, handle.id, reason])

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail_all("the engine was stopped")
