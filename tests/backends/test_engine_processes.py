"""Engine processes: one per model instance, shared by every HTTP worker; the supervisor's rules."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time

import httpx
import pytest

from backends.llamacpp.jobs import EngineSettings
from backends.llamacpp.supervisor import RESTART_CAP_S, EngineSupervisor, exit_reason, restart_delay
from tests.conftest import MODEL
from tests.proc_tree import children, cmdline, tree
from tests.server import GatewayProcess

HOST_MODULE = "backends.llamacpp.host"


def _engine_connections(socket_path: str) -> int:
    """Connected sockets at an engine's path: the server side of each worker's connection."""
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    return sum(1 for cols in rows if len(cols) >= 8 and cols[7] == socket_path and cols[5] == "03")


def test_exit_reasons_name_the_signal() -> None:
    assert exit_reason(-signal.SIGSEGV) == "SIGSEGV"
    assert exit_reason(-signal.SIGKILL) == "SIGKILL"
    assert exit_reason(-signal.SIGABRT) == "SIGABRT"
    assert exit_reason(1) == "exit code 1"


def test_restart_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    firsts = [restart_delay(1, rng) for _ in range(200)]
    assert 0.25 <= min(firsts) and max(firsts) <= 0.5 and len({round(d, 6) for d in firsts}) > 100
    assert all(1.0 <= restart_delay(3, rng) <= 2.0 for _ in range(50))
    assert all(RESTART_CAP_S / 2 <= restart_delay(30, rng) <= RESTART_CAP_S for _ in range(50))


@pytest.mark.process
@pytest.mark.e2e
def test_a_model_that_cannot_load_fails_without_restarts(tmp_path) -> None:
    """The engine's own load error (not a crash) is final: `failed`, its message, no restart loop."""
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))

    async def scenario() -> dict:
        supervisor = EngineSupervisor()
        try:
            supervisor.ensure("k", "broken", EngineSettings(model_path=str(bad), warmup=False), 1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                (status,) = supervisor.instances("k")
                if status["state"] == "failed":
                    await asyncio.sleep(1.0)  # and it stays that way
                    return supervisor.instances("k")[0]
                await asyncio.sleep(0.05)
            raise AssertionError("never failed")
        finally:
            await supervisor.aclose()

    status = asyncio.run(scenario())
    assert status["state"] == "failed" and status["restarts"] == 0, status
    assert status["last_exit"] == "exit code 3"
    assert status["detail"], "the engine's load error is reported"


@pytest.mark.process
@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_workers_share_one_engine_process() -> None:
    cfg = {"server": {"watch_config": False}, "models": [{"card": MODEL, "n_ctx": 1024, "max_queue": 32}]}
    with GatewayProcess(cfg, extra_args=["--workers", "2"]) as g:
        deadline = time.monotonic() + 60  # both workers listening and both connected to the engine
        while g.logs().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert g.proc is not None
        procs = tree(g.proc.pid)
        engines = [p for p in procs if HOST_MODULE in cmdline(p)]
        assert len(engines) == 1, [(p, cmdline(p)) for p in procs]
        assert engines[0] in children(g.proc.pid), "the parent supervises the engine, not a worker"
        body = httpx.get(f"{g.root_url}/ready", timeout=5).json()
        (instance,) = body["backends"][MODEL]["engines"]
        assert instance["pid"] == engines[0]
        socket_path = next(a for a in cmdline(engines[0]).split() if a.endswith(".sock"))
        deadline = time.monotonic() + 30
        while _engine_connections(socket_path) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _engine_connections(socket_path) == 2, "each worker has its own connection to the one engine"
        before = body["backends"][MODEL]["stats"]["completed"]
        for _ in range(16):  # fresh connections: the kernel spreads them over both workers
            r = httpx.post(f"{g.base_url}/chat/completions", timeout=60,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            assert r.status_code == 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            after = httpx.get(f"{g.root_url}/ready", timeout=5).json()["backends"][MODEL]["stats"]["completed"]
            if after - before == 16:
                break
            time.sleep(0.1)
        assert after - before == 16, "every request, whichever worker took it, ran on the one engine"


@pytest.mark.process
@pytest.mark.e2e
def test_hot_reload_keeps_an_unchanged_engine_and_starts_a_changed_one() -> None:
    import yaml

    admin = {"Authorization": "Bearer admin-key"}
    cfg = {"server": {"watch_config": False}, "models": [{"card": MODEL, "n_ctx": 1024}]}
    with GatewayProcess(cfg, env={"LLM_GATEWAY_ADMIN_KEY": "admin-key"}) as g:
        def engine() -> dict:
            return httpx.get(f"{g.root_url}/ready", timeout=5).json()["backends"][MODEL]

        def reload(config: dict) -> None:
            g.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
            r = httpx.post(f"{g.root_url}/admin/reload", headers=admin, timeout=10)
            assert r.status_code == 200 and r.json()["ok"], r.text

        first = engine()["engines"][0]["pid"]
        # A reload that leaves the model as it was: the same engine process serves on, never loaded twice.
        reload({**cfg, "deployments": [{"name": "cpu", "provider": "local", "model": MODEL}],
                "routes": [{"name": "chat", "deployments": ["cpu"]}]})
        assert engine()["engines"][0]["pid"] == first
        r = httpx.post(f"{g.base_url}/chat/completions", timeout=60,
                       json={"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200
        # A changed model: a new engine process with the new settings; the old one finishes its requests.
        reload({"server": cfg["server"], "models": [{"card": MODEL, "n_ctx": 2048}]})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            e = engine()
            if e["state"] == "ready" and e["engines"][0]["pid"] != first:
                break
            time.sleep(0.1)
        assert e["state"] == "ready" and e["engines"][0]["pid"] != first, e
        models = {m["id"]: m for m in httpx.get(f"{g.base_url}/models", timeout=5).json()["data"]}
        assert models[MODEL]["context_length"] == 2048
        os.kill(first, 0)  # still there during the retirement grace, for requests that began on it
        r = httpx.post(f"{g.base_url}/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200
