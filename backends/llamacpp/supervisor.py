"""Starts, watches and restarts the engine processes: one per local model instance.

What an engine's death costs is decided here, by one policy:

- **Died while serving** (any exit after it said `ready`: a segfault, an
  abort, the OOM killer's SIGKILL): restart it, after a capped, jittered
  backoff (0.5 s doubling to 30 s, times 0.5 to 1.0; an engine that had run
  for a minute starts the backoff afresh). Meanwhile its state is
  `restarting`, with the exit reason and the restart count.
- **Crashed while loading or warming up** with its normal settings: try once
  more at once in **safe mode**, without llama.cpp's extra buffer types (no
  repacked weights, no AMX kernels: the CPU-specific code where such crashes
  live), and report `safe_mode` with the reason. Crashing while loading in safe
  mode too, twice, leaves the instance `failed`.
- **Could not load** (exit code `wire.LOAD_FAILED`: a missing or corrupt
  file): `failed` with the engine's message; a restart would not help.

The exit reason is the signal's name (`SIGSEGV`, `SIGKILL`) or `exit code N`.
Everything runs on the event loop: processes are started and awaited with
asyncio's subprocess support, never waited for in a blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable

from backends.llamacpp.jobs import EngineSettings
from backends.llamacpp.wire import LOAD_FAILED

log = logging.getLogger("llm_gateway.engines")

RESTART_BASE_S = 0.5
RESTART_CAP_S = 30.0
STABLE_S = 60.0  # an engine up this long has its backoff reset
SAFE_MODE_TRIES = 2  # crashes while loading in safe mode before the instance is failed
STOP_GRACE_S = 5.0

Listener = Callable[[str], None]  # called with the key of the engines whose state changed


def restart_delay(crashes_in_a_row: int, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s ... up to 30 s, each times 0.5 to 1.0."""
    delay = min(RESTART_CAP_S, RESTART_BASE_S * 2 ** (max(1, crashes_in_a_row) - 1))
    return delay * (0.5 + rng.random() / 2)


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class EngineProcess:
    """One engine instance and its supervision loop."""

    def __init__(self, key: str, name: str, socket_path: str, settings: EngineSettings,
                 notify: Callable[[], None], rng: random.Random) -> None:
        self.key = key
        self.name = name
        self.socket_path = socket_path
        self.settings = settings
        self._notify = notify
        self._rng = rng
        self.state = "starting"  # starting | loading | ready | restarting | failed | stopped
        self.pid: int | None = None
        self.generation = 0  # one more for every process started
        self.restarts = 0
        self.restarts_by_reason: dict[str, int] = {}
        self.last_exit: str | None = None
        self.safe_mode = False
        self.safe_mode_reason: str | None = None
        self.detail: str | None = None
        self.info: dict[str, Any] = {}
        self.ready_at: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"engine-{self.name}")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "pid": self.pid, "generation": self.generation,
                "socket": self.socket_path, "restarts": self.restarts, "restarts_by_reason": self.restarts_by_reason,
                "last_exit": self.last_exit, "safe_mode": self.safe_mode, "safe_mode_reason": self.safe_mode_reason,
                "detail": self.detail, "info": self.info,
                "uptime_s": round(time.monotonic() - self.ready_at, 1) if self.ready_at else None}

    def _set(self, state: str) -> None:
        self.state = state
        self._notify()

    async def stop(self) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()  # the engine cancels what runs and exits
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"
        self._notify()

    # -- the loop ------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._restart_loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the supervisor's own failure (cannot start a process at all, say)
            log.exception("supervising engine %s failed", self.name)
            self.detail = f"the engine process could not be started: {exc}"
            self._set("failed")

    async def _restart_loop(self) -> None:
        crashes_in_a_row = 0
        safe_crashes = 0
        while not self._stopping:
            ready, up_s, returncode = await self._run_once()
            if self._stopping:
                return
            reason = exit_reason(returncode)
            self.last_exit = reason
            self.pid = None
            self.ready_at = None
            if returncode == LOAD_FAILED:
                log.error("engine %s cannot load its model: %s", self.name, self.detail)
                self._set("failed")
                return
            delay: float
            if not ready and not self.safe_mode:
                self.safe_mode = True
                self.safe_mode_reason = (f"the engine crashed while loading or warming up ({reason}); running "
                                         "without llama.cpp's extra buffer types (no repacked or AMX weights)")
                log.error("engine %s crashed while loading (%s); retrying once in safe mode", self.name, reason)
                delay = 0.0
            else:
                if not ready:
                    safe_crashes += 1
                    if safe_crashes >= SAFE_MODE_TRIES:
                        self.detail = (f"the engine crashed while loading {safe_crashes} times in safe mode as well "
                                       f"(last: {reason}); see the gateway's log for the engine's own output")
                        log.error("engine %s: %s; giving up", self.name, self.detail)
                        self._set("failed")
                        return
                crashes_in_a_row = 1 if (ready and up_s >= STABLE_S) else crashes_in_a_row + 1
                delay = restart_delay(crashes_in_a_row, self._rng)
            self.restarts += 1
            self.restarts_by_reason[reason] = self.restarts_by_reason.get(reason, 0) + 1
            log.error("engine %s (generation %d) died: %s; restart %d in %.1f s", self.name, self.generation,
                      reason, self.restarts, delay)
            self._set("restarting")
            await asyncio.sleep(delay)

    async def _run_once(self) -> tuple[bool, float, int]:
        """Start one engine process and follow it to its end: (reached ready, seconds up, return code)."""
        settings = dataclasses.replace(self.settings, use_extra_bufts=self.settings.use_extra_bufts
                                       and not self.safe_mode)
        self.generation += 1
        self.detail = None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backends.llamacpp.host", self.socket_path, self.name,
            json.dumps(dataclasses.asdict(settings)),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=_engine_env(),
            start_new_session=True)  # a terminal's Ctrl-C is for the gateway, which then stops its engines
        self._proc = proc
        self.pid = proc.pid
        self._set("loading" if self.restarts == 0 else "restarting")
        ready_at: float | None = None
        assert proc.stdout is not None
        async for raw in proc.stdout:
            event = _event(raw)
            if event is None:
                log.info("engine %s: %s", self.name, raw.decode(errors="replace").rstrip())
            elif event.get("event") == "ready":
                ready_at = self.ready_at = time.monotonic()
                self.info = event.get("info") or {}
                _log_ready(self.name, self.info)
                self._set("ready")
            elif event.get("event") == "failed":
                self.detail = str(event.get("error"))
        returncode = await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        up = time.monotonic() - ready_at if ready_at else 0.0
        return ready_at is not None, up, returncode


def _event(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _engine_env() -> dict[str, str]:
    """The gateway's environment, with the project importable however the gateway was started."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the engine exports no metrics of its own
    return env


def _log_ready(name: str, info: dict[str, Any]) -> None:
    features = " ".join(info.get("llama_cpp", {}).get("features", []))
    weights = ", ".join(f"{k} {v:.0f} MiB" for k, v in (info.get("weights") or {}).items())
    log.info("engine %s ready (pid %s, %.1f s%s): llama.cpp %s on %s; features: %s; weights: %s", name,
             info.get("pid"), info.get("load_s", 0), ", SAFE MODE" if info.get("safe_mode") else "",
             info.get("llama_cpp", {}).get("version"), info.get("cpu", {}).get("model"), features, weights or "-")


class EngineSupervisor:
    """Every engine process of this gateway, by the key of the local model they serve."""

    def __init__(self, run_dir: str | None = None, rng: random.Random | None = None) -> None:
        self._own_dir = run_dir is None
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="llm-gateway-engines-")  # 0700: ours alone
        self._rng = rng or random.Random()
        self._engines: dict[str, list[EngineProcess]] = {}
        self._refs: dict[str, int] = {}
        self.listeners: list[Listener] = []

    def ensure(self, key: str, name: str, settings: EngineSettings, instances: int) -> None:
        """Run `instances` engines for `key`, unless they run already (then one more user)."""
        self._refs[key] = self._refs.get(key, 0) + 1
        if key in self._engines:
            return
        slug = "".join(c for c in key if c.isalnum())[-16:]
        procs = [EngineProcess(key, f"{name}#{i}", os.path.join(self.run_dir, f"{slug}-{i}.sock"), settings,
                               lambda: self._changed(key), self._rng) for i in range(instances)]
        self._engines[key] = procs
        for proc in procs:
            proc.start()

    async def release(self, key: str) -> None:
        """One user fewer; the last one stops the engines."""
        self._refs[key] = self._refs.get(key, 0) - 1
        if self._refs[key] > 0:
            return
        self._refs.pop(key, None)
        procs = self._engines.pop(key, [])
        await asyncio.gather(*(p.stop() for p in procs))
        self._changed(key)

    def instances(self, key: str) -> list[dict[str, Any]]:
        return [p.status() for p in self._engines.get(key, [])]

    def keys(self) -> list[str]:
        return list(self._engines)

    def _changed(self, key: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(key)
            except Exception:  # a listener's bug must not stop supervision
                log.exception("engine state listener failed")

    async def aclose(self) -> None:
        procs = [p for group in self._engines.values() for p in group]
        self._engines.clear()
        self._refs.clear()
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        if self._own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
