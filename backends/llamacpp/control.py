"""How a local backend gets its engine processes, wherever their supervisor runs.

With one process, the gateway supervises its engines itself (`LocalControl`).
With `--workers N`, the parent process supervises them (`ControlServer`) and
every worker asks it over the control channel (`RemoteControl`), so N
workers share one engine per model instance instead of loading N copies. The
backend sees the same small interface either way: ensure the engines for a
key, release them, read their state, and hear when it changes.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import logging
import os
import threading
from typing import Any, Callable

from backends.llamacpp import wire
from backends.llamacpp.jobs import EngineSettings
from backends.llamacpp.supervisor import EngineSupervisor

log = logging.getLogger("llm_gateway.engines")

CONTROL_ENV = "LLM_GATEWAY_ENGINE_CONTROL"  # the control socket's path, set for workers by their parent
DISCONNECT_GRACE_S = 30.0  # a dead worker's engines are kept this long for its replacement
RECONNECT_S = 0.5


class EngineControl(abc.ABC):
    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[[], None]]] = {}

    @abc.abstractmethod
    async def ensure(self, key: str, name: str, settings: EngineSettings, instances: int) -> None:
        """Have `instances` engines serve `settings`; started once per key, however many ask."""

    @abc.abstractmethod
    async def release(self, key: str) -> None:
        """This backend no longer needs them; the last user's release stops them."""

    @abc.abstractmethod
    def instances(self, key: str) -> list[dict[str, Any]]:
        """Each engine's status, as `EngineProcess.status()` gives it (a cached copy for remote ones)."""

    async def aclose(self) -> None:
        return None

    def subscribe(self, key: str, callback: Callable[[], None]) -> None:
        self._subscribers.setdefault(key, []).append(callback)

    def unsubscribe(self, key: str, callback: Callable[[], None]) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._subscribers[key].remove(callback)

    def _notify(self, key: str) -> None:
        for callback in list(self._subscribers.get(key, ())):
            callback()


class LocalControl(EngineControl):
    """The engines are this process's own children."""

    def __init__(self, supervisor: EngineSupervisor | None = None) -> None:
        super().__init__()
        self.supervisor = supervisor or EngineSupervisor()
        self.supervisor.listeners.append(self._notify)

    async def ensure(self, key: str, name: str, settings: EngineSettings, instances: int) -> None:
        self.supervisor.ensure(key, name, settings, instances)

    async def release(self, key: str) -> None:
        await self.supervisor.release(key)

    def instances(self, key: str) -> list[dict[str, Any]]:
        return self.supervisor.instances(key)

    async def aclose(self) -> None:
        await self.supervisor.aclose()


class RemoteControl(EngineControl):
    """A worker's view of the engines its parent supervises, kept current by the parent's pushes."""

    def __init__(self, socket_path: str) -> None:
        super().__init__()
        self.socket_path = socket_path
        self._views: dict[str, list[dict[str, Any]]] = {}
        self._held: dict[str, tuple[str, dict[str, Any], int, int]] = {}  # key -> (name, settings, instances, refs)
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    async def ensure(self, key: str, name: str, settings: EngineSettings, instances: int) -> None:
        held = self._held.get(key)
        refs = held[3] + 1 if held else 1
        self._held[key] = (name, dataclasses.asdict(settings), instances, refs)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="engine-control")
        await self._connected.wait()
        if held is None:
            self._send(wire.ENSURE, key, name, self._held[key][1], instances)

    async def release(self, key: str) -> None:
        held = self._held.get(key)
        if held is None:
            return
        if held[3] > 1:
            self._held[key] = (*held[:3], held[3] - 1)
            return
        del self._held[key]
        self._send(wire.RELEASE, key)

    def instances(self, key: str) -> list[dict[str, Any]]:
        return self._views.get(key, [])

    def _send(self, *fields: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.pack(*fields))

    async def _run(self) -> None:
        """Stay connected; after a reconnect, ask again for everything this worker holds."""
        while not self._closing:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.socket_path)
            except OSError as exc:
                log.error("cannot reach the engine supervisor at %s: %s", self.socket_path, exc)
                await asyncio.sleep(RECONNECT_S)
                continue
            for key, (name, settings, instances, _) in self._held.items():
                self._send(wire.ENSURE, key, name, settings, instances)
            self._connected.set()
            messages = wire.Reader()
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    for msg in messages.feed(data):
                        if msg[0] == wire.INSTANCES:
                            self._views[msg[1]] = msg[2]
                            self._notify(msg[1])
            self._connected.clear()
            self._writer = None
            if not self._closing:
                log.error("lost the engine supervisor; reconnecting")
                await asyncio.sleep(RECONNECT_S)

    async def aclose(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ControlServer:
    """In the parent of `--workers N`: one supervisor, served to every worker over a Unix socket."""

    def __init__(self, supervisor: EngineSupervisor, socket_path: str) -> None:
        self.supervisor = supervisor
        self.socket_path = socket_path
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.base_events.Server | None = None
        self._pending: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.supervisor.listeners.append(self._broadcast)
        self._server = await asyncio.start_unix_server(self._handle, path=self.socket_path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        held: dict[str, int] = {}
        messages = wire.Reader()
        try:
            while data := await reader.read(65536):
                for msg in messages.feed(data):
                    if msg[0] == wire.ENSURE:
                        key = msg[1]
                        self.supervisor.ensure(key, msg[2], EngineSettings(**msg[3]), msg[4])
                        held[key] = held.get(key, 0) + 1
                        writer.write(wire.pack(wire.INSTANCES, key, self.supervisor.instances(key)))
                    elif msg[0] == wire.RELEASE and held.get(msg[1]):
                        held[msg[1]] -= 1
                        await self.supervisor.release(msg[1])
        except (ConnectionError, ValueError, TypeError) as exc:
            log.warning("engine control connection dropped: %s", exc)
        finally:
            self._writers.discard(writer)
            writer.close()
            for key, count in held.items():
                for _ in range(count):
                    task = asyncio.create_task(self._release_later(key))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)

    async def _release_later(self, key: str) -> None:
        await asyncio.sleep(DISCONNECT_GRACE_S)
        await self.supervisor.release(key)

    def _broadcast(self, key: str) -> None:
        data = wire.pack(wire.INSTANCES, key, self.supervisor.instances(key))
        for writer in list(self._writers):
            if not writer.is_closing():
                writer.write(data)

    async def aclose(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self.supervisor.aclose()


class ControlThread:
    """A supervisor and its control socket on an event loop of their own, in a thread of the parent
    of `--workers N` (whose main thread belongs to the worker supervision loop, or to uvicorn's).
    `start()` returns the socket path to hand to workers; `stop()` stops every engine."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ControlServer | None = None

    def start(self) -> str:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                supervisor = EngineSupervisor()
                self._server = ControlServer(supervisor, os.path.join(supervisor.run_dir, "control.sock"))
                loop.run_until_complete(self._server.start())
            except BaseException as exc:  # reported to the caller of start()
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._server.aclose())
            loop.close()

        self._thread = threading.Thread(target=run, name="engine-supervisor", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        assert self._server is not None
        return self._server.socket_path

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
