"""The engine processes of one local model, as one HTTP worker sees them.

It asks the control (in this process, or the parent of `--workers N`) for
the engines, connects to each as soon as its supervisor says it is ready,
connects again after every restart, and picks the least loaded one for each
job. Its state is what `/ready` shows for the model: `loading` until the
first engine serves, `ready` while at least one does, `restarting` while none
does and one is coming back, `failed` when none can.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from backends.aio import within
from backends.llamacpp.client import EngineClient, JobHandle
from backends.llamacpp.control import EngineControl
from backends.llamacpp.jobs import EngineSettings
from backends.llamacpp.wire import FULL

log = logging.getLogger("llm_gateway.llamacpp")

CONNECT_TRIES = 20
CONNECT_RETRY_S = 0.1


class NoEngine(Exception):
    """No engine of this model is connected now; `retry_after` estimates when one will be."""

    def __init__(self, state: str, retry_after: float) -> None:
        super().__init__(state)
        self.state = state
        self.retry_after = retry_after


class AllFull(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("full")
        self.retry_after = retry_after


class EngineSet:
    def __init__(self, name: str, key: str, control: EngineControl, settings: EngineSettings, instances: int,
                 listeners: list[Callable[[], None]] | None = None) -> None:
        self.name = name
        self.key = key
        self.control = control
        self.settings = settings
        self.clients = [EngineClient(f"{name}#{i}", on_lost=self._lost) for i in range(instances)]
        # Told when an engine starts or stops serving (a list shared with whoever owns this set).
        self.listeners = listeners if listeners is not None else []
        self._connecting: set[int] = set()
        self._settled = asyncio.Event()
        self._ensured = False

    async def start(self) -> None:
        """Have the engines started, and wait until each one serves or has failed."""
        self.control.subscribe(self.key, self._changed)
        await self.control.ensure(self.key, self.name, self.settings, len(self.clients))
        self._ensured = True
        self._changed()
        await self._settled.wait()

    async def aclose(self) -> None:
        self.control.unsubscribe(self.key, self._changed)
        await asyncio.gather(*(c.close() for c in self.clients))
        if self._ensured:
            self._ensured = False
            await self.control.release(self.key)

    # -- following the supervisor -------------------------------------------------

    def views(self) -> list[dict[str, Any]]:
        return self.control.instances(self.key)

    def _changed(self) -> None:
        views = self.views()
        for i, view in enumerate(views[: len(self.clients)]):
            client = self.clients[i]
            fresh = view["state"] == "ready" and (not client.connected or client.generation != view["generation"])
            if fresh and i not in self._connecting:
                self._connecting.add(i)
                asyncio.get_running_loop().create_task(self._connect(i, view))
        if views and all(v["state"] in ("ready", "failed") for v in views) and not self._connecting:
            if all(v["state"] == "failed" for v in views) or any(c.connected for c in self.clients):
                self._settled.set()

    async def _connect(self, i: int, view: dict[str, Any]) -> None:
        client = self.clients[i]
        try:
            if client.connected:
                await client.close()
            for _ in range(CONNECT_TRIES):
                try:
                    await client.connect(view["socket"], view["generation"])
                    break
                except (OSError, asyncio.TimeoutError):
                    await asyncio.sleep(CONNECT_RETRY_S)
            else:
                log.error("engine %s said it was ready but does not answer on %s", client.name, view["socket"])
        finally:
            self._connecting.discard(i)
        self._changed()
        self._tell()

    def _lost(self, client: EngineClient) -> None:
        log.warning("engine %s went away; its jobs failed, waiting for its supervisor to restart it", client.name)
        self._tell()

    def _tell(self) -> None:
        for listener in list(self.listeners):
            listener()

    # -- state ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(c.connected for c in self.clients)

    @property
    def state(self) -> str:
        if self.ready:
            return "ready"
        views = self.views()
        if not views:
            return "loading"
        states = {v["state"] for v in views}
        if states == {"failed"}:
            return "failed"
        if "restarting" in states or any(v["restarts"] for v in views):
            return "restarting"
        return "loading"

    def detail(self) -> str | None:
        failed = [v for v in self.views() if v["state"] == "failed" and v.get("detail")]
        return "; ".join(f"{v['name']}: {v['detail']}" for v in failed) or None

    def retry_after(self) -> float:
        """When an engine is likely to serve again: its last load time, at least a second."""
        loads = [float((v.get("info") or {}).get("load_s") or 2.0) for v in self.views()]
        return max(1.0, min(loads, default=2.0) + 1.0)

    # -- jobs -----------------------------------------------------------------------

    async def open(self, spec: dict[str, Any], deadline: float) -> tuple[JobHandle, list[Any]]:
        """Submit to the least loaded engine that takes it; the handle and its first event.

        Raises `NoEngine` when none is connected, `AllFull` when every engine's queue is full, and
        `asyncio.TimeoutError` at the deadline (the job is cancelled).
        """
        clients = sorted((c for c in self.clients if c.connected), key=lambda c: c.load)
        if not clients:
            raise NoEngine(self.state, self.retry_after())
        waits: list[float] = []
        for client in clients:
            try:
                handle = client.submit(spec)
            except ConnectionError:
                continue
            first = await _first(handle, deadline)
            if first[0] == FULL:
                waits.append(float(first[2]))
                continue
            return handle, first
        if waits:
            raise AllFull(min(waits))
        raise NoEngine(self.state, self.retry_after())

    def stats(self) -> dict[str, Any]:
        """Counters summed over the connected engines (each engine's since its last start)."""
        out: dict[str, Any] = {}
        for client in self.clients:
            if client.connected:
                for key, value in client.stats.items():
                    if key not in ("retry_after", "load"):
                        out[key] = out.get(key, 0) + value
        return out

    def load(self) -> float:
        return sum(c.load for c in self.clients)

    def supervision(self) -> dict[str, Any]:
        """Restarts, exit reasons, safe mode and what llama.cpp found, for `/ready`."""
        views = self.views()
        restarts = sum(v["restarts"] for v in views)
        by_reason: dict[str, int] = {}
        for v in views:
            for reason, count in (v.get("restarts_by_reason") or {}).items():
                by_reason[reason] = by_reason.get(reason, 0) + count
        safe = [v for v in views if v["safe_mode"]]
        exits = [v["last_exit"] for v in views if v.get("last_exit")]
        info = next((v["info"] for v in views if v.get("info")), {})
        out: dict[str, Any] = {
            "restarts": restarts, "restarts_by_reason": by_reason, "last_exit": exits[-1] if exits else None,
            "safe_mode": bool(safe), "engines": [_engine_view(v) for v in views],
        }
        if safe:
            out["safe_mode_reason"] = safe[0]["safe_mode_reason"]
        if info:
            out["system"] = {"cpu": info.get("cpu"), "llama_cpp": info.get("llama_cpp"), "weights": info.get("weights")}
        return out


async def _first(handle: JobHandle, deadline: float) -> list[Any]:
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise asyncio.TimeoutError
        return await within(handle.events.get(), remaining)
    except BaseException:
        handle.cancel()
        raise


def _engine_view(v: dict[str, Any]) -> dict[str, Any]:
    out = {k: v.get(k) for k in ("name", "state", "pid", "restarts", "last_exit", "safe_mode", "uptime_s")}
    if v.get("detail"):
        out["detail"] = v["detail"]
    return out

