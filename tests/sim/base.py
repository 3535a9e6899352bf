"""A real HTTP server on 127.0.0.1 with its own event loop in a daemon thread.

Running the loop in a thread lets synchronous tests start, stop, crash and
inspect an upstream while the gateway talks to it over real sockets; the same
class runs in the foreground of a separate process via ``python -m tests.sim``.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from tests.sim import faults as F
from tests.sim.faults import Fault
from tests.sim.wire import BODY, BODY_OK, drop, rst

_S = TypeVar("_S", bound="SimServer")


@dataclass
class RecordedRequest:
    """One request as the simulator saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when empty / not JSON
    raw: bytes = field(default=b"", repr=False)


class SimServer:
    """Base simulator: lifecycle, request log and fault queue; subclasses add routes."""

    #: Paths whose requests consume faults (never /health or /metrics).
    model_paths: frozenset[str] = frozenset()
    #: Status a non-streamed request gets for Fault.in_band_error.
    server_error_status = 500

    def __init__(self, name: str = "sim", port: int = 0) -> None:
        self.name = name
        self._port = port
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._persistent: Fault | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._error: BaseException | None = None
        self.inflight = 0

    # ----------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def is_running(self) -> bool:
        return self._thread is not None

    def start(self: _S) -> _S:
        """Bind 127.0.0.1:port (a free port the first time if 0, then kept) and serve."""
        if self._thread is not None:
            return self
        self._error = None
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=f"sim-{self.name}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"{self.name}: cannot start on port {self._port}") from self._error
        return self

    def stop(self) -> None:
        """Crash-like stop: close the listener, abort every open connection, cancel handlers."""
        if self._thread is None or self._loop is None:
            return
        loop, thread = self._loop, self._thread
        try:
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            self._thread = None
            self._loop = None

    def restart(self: _S) -> _S:
        """Stop (like a crash) and start again on the same port."""
        self.stop()
        return self.start()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._astart())
        except BaseException as exc:  # reported to start()
            self._error = exc
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self.add_routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=0.5, handler_cancellation=True
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _astop(self) -> None:
        runner = self._runner
        self._runner = None
        if runner is None:
            return
        for site in list(runner.sites):
            await site.stop()  # closes the listening socket: new connections are refused
        server = runner.server
        for conn in server.connections if server else []:
            if conn.transport is not None:
                rst(conn.transport)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)
        await runner.cleanup()

    # ------------------------------------------------------ request log
    def count(self, path: str) -> int:
        """How many requests hit ``path``."""
        with self._lock:
            return sum(1 for r in self.requests if r.path == path)

    def clear(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        model = request.path in self.model_paths
        self.inflight += model
        try:
            raw = await request.read()
            try:
                body, ok = (orjson.loads(raw) if raw else None), True
            except orjson.JSONDecodeError:
                body, ok = None, False
            request[BODY], request[BODY_OK] = body, ok
            rec = RecordedRequest(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body, raw)
            with self._lock:
                self.requests.append(rec)
            return await handler(request)
        finally:
            self.inflight -= model
            if task is not None:
                self._tasks.discard(task)

    # ---------------------------------------------------------- faults
    def add_fault(self, fault: Fault, times: int = 1) -> None:
        """Queue ``fault`` for each of the next ``times`` model requests (FIFO)."""
        with self._lock:
            self._queue.extend([fault] * times)

    def set_fault(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every model request (after the queue is empty) until cleared."""
        with self._lock:
            self._persistent = fault

    def clear_faults(self) -> None:
        with self._lock:
            self._queue.clear()
            self._persistent = None

    def take_fault(self) -> Fault | None:
        """The fault for the model request now starting: queued first, else the persistent one."""
        with self._lock:
            return self._queue.popleft() if self._queue else self._persistent

    async def apply_fault(self, request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
        """Act on a pre-answer fault; returns the response to return (maybe a dropped one), or None."""
        if fault is None or fault.is_stream_fault:
            return None
        if fault.kind == F.LATENCY:
            await asyncio.sleep(fault.seconds)
            return None
        if fault.kind == F.STATUS:
            resp = self.fault_error(fault.code, fault.message)
            if fault.retry_after is not None:
                ra = fault.retry_after
                resp.headers["Retry-After"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            return resp
        if fault.kind == F.HANG:
            await asyncio.sleep(fault.seconds)
        return await drop(request, reset=True)

    async def nonstream_fault(self, request: web.Request, fault: Fault | None, pieces: int) -> web.StreamResponse | None:
        """What a stream-shaping fault does to a non-streamed answer."""
        if fault is None or not fault.is_stream_fault:
            return None
        if fault.kind == F.CUT_STREAM:
            return await drop(request, reset=True)
        if fault.kind == F.IN_BAND_ERROR:
            return self.fault_error(self.server_error_status, fault.message)
        await asyncio.sleep(fault.seconds if fault.kind == F.STALL else fault.seconds * pieces)
        return None

    def fault_error(self, code: int, message: str | None) -> web.Response:
        """The protocol's error response for an injected status (subclasses override)."""
        return web.json_response({"error": message or "injected"}, status=code)

    # ---------------------------------------------------------- to override
    def add_routes(self, app: web.Application) -> None:
        """Register the protocol's routes."""

