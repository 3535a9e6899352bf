"""Owns the live `Runtime`: starts it, health-checks it, and swaps in a new one on reload.

A reload validates first; an invalid config is refused with line-numbered
problems and the old runtime keeps serving. A valid one is swapped in
atomically (one attribute assignment); requests already running finish on
the runtime they started with. A config text applied through the admin API
(`apply`) takes the same path, and is written to the config file too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import yaml

from backends.llamacpp.control import EngineControl, LocalControl
from backends.model_cards import ModelCard
from routing.config import ConfigError, GatewayConfig, ServerConfig
from routing.config_checks import missing_secrets
from routing.config_file import parse_config, read_config_text
from routing.config_mask import restore_masked
from routing.config_write import target, write_atomically
from routing.local_models import local_model_problems
from routing.runtime import Runtime, build_runtime, retire, start_backends

log = logging.getLogger("llm_gateway.routing")


def server_changes(serving: ServerConfig, new: ServerConfig) -> list[str]:
    """The `server` settings a reload asked for but cannot apply (their dotted names)."""
    a, b = serving.model_dump(), new.model_dump()
    return [f"server.{name}" for name in a if a[name] != b[name]]


class RuntimeManager:
    def __init__(self, config: GatewayConfig, cards: dict[str, ModelCard], config_path: str | None = None,
                 control: EngineControl | None = None) -> None:
        self.cards = cards
        self.config_path = config_path
        self.started_at = int(time.time())
        # Who runs the local models' engine processes: this process, or the parent of `--workers N`.
        self.control = control or LocalControl()
        self._health_task: asyncio.Task | None = None
        self.current: Runtime = build_runtime(config, cards, version=1, control=self.control)
        self.serving_server = config.server  # read once at start-up (limits, CORS, docs): a reload cannot change it
        self._follow_engines(self.current)
        self.last_reload: dict[str, Any] = {"ok": True, "version": 1, "at": time.time(), "problems": []}
        self._stamp = self._file_stamp()
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()
        for warning in missing_secrets(config):
            log.warning("config: %s", warning)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._start(self.current), name="start-backends"))
        if self.current.config.health_checks.enabled:
            self._tasks.append(asyncio.create_task(self._health_loop(), name="health-checks"))
        if self.config_path and self.current.config.server.watch_config:
            self._tasks.append(asyncio.create_task(self._watch_loop(), name="config-watch"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await retire(self.current, None)
        await self.control.aclose()

    # -- reload ------------------------------------------------------------------

    async def reload(self, text: str | None = None) -> dict[str, Any]:
        """Validate and swap in the config file (or `text`, in memory only); return the result either way."""
        async with self._lock:
            return await self._reload(text)

    async def _reload(self, text: str | None) -> dict[str, Any]:
        source = self.config_path or "<config>"
        try:
            if text is None:
                if not self.config_path:
                    raise ConfigError(source, [f"{source}: the gateway was started without --config"])
                text = await asyncio.to_thread(read_config_text, self.config_path)
            config = await self._check(text, source)
        except ConfigError as exc:
            return self._refused(exc.problems)
        return self._swap(config)

    async def validate(self, text: str) -> dict[str, Any]:
        """What `apply(text)` would say of the text, without applying it: {ok, problems, warnings}. The
        problems are `llm-gateway check`'s (the same parser and local-model checks) and the reload's own."""
        source = self.config_path or "<config>"
        try:
            text = await self._unmasked(text, source)
            config = await self._check(text, source)
        except ConfigError as exc:
            return {"ok": False, "problems": exc.problems, "warnings": []}
        return {"ok": True, "problems": [], "warnings": missing_secrets(config)}

    async def apply(self, text: str) -> dict[str, Any]:
        """Validate `text` as a reload of the file does; if it passes, write it to the config file (at once:
        routing.config_write) and swap it in, so the watcher sees no change to undo and a restart keeps it.
        A refused text changes nothing: the old config serves on. NotWritable (nothing changed) when the
        gateway has no file it may write."""
        async with self._lock:
            await asyncio.to_thread(target, self.config_path)
            assert self.config_path is not None
            source = self.config_path
            try:
                text = await self._unmasked(text, source)
                config = await self._check(text, source)
            except ConfigError as exc:
                return self._refused(exc.problems)
            await asyncio.to_thread(write_atomically, self.config_path, text)
            self._stamp = self._file_stamp()  # this worker's watcher: nothing new; other workers' reload it
            return self._swap(config)

    async def _unmasked(self, text: str, source: str) -> str:
        """`text` with the masks it shows (GET /admin/config's `text`) back to the running file's secrets."""
        running = None
        if self.config_path:
            try:
                running = await asyncio.to_thread(read_config_text, self.config_path)
            except ConfigError:
                running = None
        text, problems = restore_masked(text, running, source)
        if problems:
            raise ConfigError(source, problems)
        return text

    async def _check(self, text: str, source: str) -> GatewayConfig:
        """The config `text` holds, or ConfigError with its line-numbered problems."""
        try:
            config = parse_config(text, source, known_cards=set(self.cards))
            self._refuse_emptying(text, source)
            # A local model this install cannot start (no llama.cpp, weights not here) is refused now,
            # at its line, rather than failing in its engine after the swap.
            problems = await asyncio.to_thread(local_model_problems, config, self.cards, text, source)
        except ConfigError:
            raise
        except Exception as exc:  # a bug must not take reloading down with it: refuse, keep serving
            log.exception("config reload failed")
            raise ConfigError(source, [f"{source}: the config could not be loaded ({type(exc).__name__})"]) from exc
        if problems:
            raise ConfigError(source, problems)
        return config

    def _swap(self, config: GatewayConfig) -> dict[str, Any]:
        old = self.current
        new = build_runtime(config, self.cards, previous=old, version=old.version + 1, control=self.control)
        self._follow_engines(new)
        self.current = new  # the swap: new requests see the new routes from here on
        for warning in missing_secrets(config):
            log.warning("config: %s", warning)
        self._tasks.append(asyncio.create_task(self._start(new), name=f"start-backends-v{new.version}"))
        self._tasks.append(asyncio.create_task(retire(old, new), name=f"retire-v{old.version}"))
        self._tasks = [t for t in self._tasks if not t.done()]
        self.last_reload = {"ok": True, "version": new.version, "at": time.time(), "problems": []}
        log.info("config reloaded: version %d, %d routes", new.version, len(new.route_list))
        pending = server_changes(self.serving_server, config.server)
        if pending:
            self.last_reload["restart_needed"] = pending
            log.warning("config: %s changed; the server section is read at start-up, so the running values "
                        "stay until the gateway restarts", ", ".join(pending))
        return self.last_reload

    def _refused(self, problems: list[str]) -> dict[str, Any]:
        self.last_reload = {"ok": False, "version": self.current.version, "at": time.time(), "problems": problems}
        log.error("config reload refused; still serving version %d:\n%s", self.current.version,
                  "\n".join(problems))
        return self.last_reload

    def _refuse_emptying(self, text: str, source: str) -> None:
        """A config with nothing in it replaces nothing: an empty file is a truncated write (an editor, a deploy
        tool, `> gateway.yaml`), and applying it would drop every route and load the embedded default model."""
        old = self.current.config
        data = yaml.safe_load(text)  # parsed fine already
        empty = not data or not any(data.get(k) for k in ("models", "providers", "deployments", "routes"))
        if empty and (old.providers or old.deployments or old.routes or self._has_models(old)):
            raise ConfigError(source, [f"{source}:1: the new config has no models, providers, deployments or "
                                       f"routes; refusing to replace version {self.current.version}, which has "
                                       f"{len(old.routes)} route(s) and {len(old.models)} local model(s) (restart "
                                       "the gateway to start from an empty config)"])

    def _has_models(self, config: GatewayConfig) -> bool:
        """Local models that were asked for (not only the embedded default of an empty file)."""
        return bool(config.models) and config.model_dump(exclude_unset=True).get("models") is not None

    def _file_stamp(self) -> tuple[int, int] | None:
        if not self.config_path:
            return None
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    async def _watch_loop(self) -> None:
        interval = self.current.config.server.watch_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._lock:  # under the lock: an apply's own write is never taken for an edit
                    stamp = self._file_stamp()
                    if stamp is not None and stamp != self._stamp:
                        self._stamp = stamp
                        await self._reload(None)
            except Exception:  # the watcher outlives anything a file can do to it
                log.exception("config watch failed; watching on")

    async def _start(self, runtime: Runtime) -> None:
        """Load the runtime's backends, then check health at once: the first round of checks ran while
        local models were still loading and marked them unhealthy, and the next one is a whole interval
        away (10 s by default), during which `/v1/models` and `/ready` would call a loaded model unusable."""
        await start_backends(runtime)
        if runtime is self.current and runtime.config.health_checks.enabled:
            try:
                await self.check_health()
            except Exception:
                log.exception("health check after start-up failed")

    # -- health ------------------------------------------------------------------

    def _follow_engines(self, runtime: Runtime) -> None:
        """Check health as soon as a local engine starts or stops serving (a crash, a restart), so
        routing and `/ready` follow at once rather than at the next health round."""
        for backend in runtime.local_backends():
            listeners = getattr(backend, "listeners", None)
            if listeners is not None and self._engine_changed not in listeners:
                listeners.append(self._engine_changed)

    def _engine_changed(self) -> None:
        if not self.current.config.health_checks.enabled:
            return
        if self._health_task is None or self._health_task.done():
            self._health_task = asyncio.get_running_loop().create_task(self.check_health(), name="health-now")

    async def check_health(self) -> None:
        runtime = self.current
        timeout = runtime.config.health_checks.timeout_s

        async def one(dep) -> None:  # type: ignore[no-untyped-def]
            was = dep.healthy
            try:
                dep.healthy = bool(await asyncio.wait_for(dep.backend.probe(), timeout))
            except (asyncio.TimeoutError, Exception):
                dep.healthy = False
            if dep.healthy and not was:  # back: let its open breaker probe now rather than at its next step
                dep.breaker.health_recovered()

        await asyncio.gather(*(one(d) for d in runtime.deployments.values()))

    async def _health_loop(self) -> None:
        while True:
            try:
                await self.check_health()
            except Exception:  # a health check must never take the loop down
                log.exception("health check round failed")
            await asyncio.sleep(self.current.config.health_checks.interval_s)
