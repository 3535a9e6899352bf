"""Readiness and liveness, on real processes (the decisions themselves: test_probes.py).

`/ready` is 503 while a required model loads and 200 once it is loaded and warm; an upstream's outage
only degrades it (200), unless its route says `ready_requires_upstreams`. `/health` answers throughout,
and turns 503 once a required model has been `failed` for `server.liveness_failed_after_s`.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from backends.llamacpp.host import HOLD_ENV
from gateway.app import create_app
from routing.config import GatewayConfig, LlamaCppModelConfig, ServerConfig
from tests.conftest import MODEL
from tests.routing_env import Sims, sims  # noqa: F401
from tests.server import GatewayProcess, free_port
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.process]


@pytest.mark.parametrize("parallel", [1, 8], ids=["serial", "batched"])
def test_ready_is_503_while_loading_then_200(monkeypatch: pytest.MonkeyPatch, tmp_path, parallel: int) -> None:
    # The engine process waits for this file before it loads, so the 503 is observed for sure.
    gate = tmp_path / "go"
    monkeypatch.setenv(HOLD_ENV, str(gate))
    monkeypatch.delenv("REDIS_URL", raising=False)
    app = create_app(GatewayConfig(models=[LlamaCppModelConfig(card=MODEL, n_ctx=1024, parallel=parallel)]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started

        loading = httpx.get(f"{base}/ready")
        assert loading.status_code == 503
        body = loading.json()
        assert body["not_ready"] == [MODEL]
        assert body["backends"][MODEL]["state"] == "loading"
        assert "retry-after" in loading.headers
        assert httpx.get(f"{base}/health").status_code == 200
        early = httpx.post(f"{base}/v1/chat/completions",
                           json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert early.status_code == 503
        assert early.json()["error"]["code"] == "model_not_ready"
        assert "retry-after" in early.headers

        gate.touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready = httpx.get(f"{base}/ready")
            if ready.status_code == 200:
                break
            time.sleep(0.05)
        assert ready.status_code == 200
        backend = ready.json()["backends"][MODEL]
        assert backend["stats"]["tokens_generated"] > 0, "the warm-up generation ran before /ready turned 200"
        # What llama.cpp found and chose is visible from outside.
        system = backend["system"]
        assert system["llama_cpp"]["features"] and system["cpu"]["arch"]
        assert "AMX_INT8" not in system["llama_cpp"]["features"], "the AMX kernels crash on Q4_K models"
        assert system["weights"] and all(mib > 0 for mib in system["weights"].values())
        assert backend["safe_mode"] is False and backend["restarts"] == 0
        r = httpx.post(f"{base}/v1/chat/completions", timeout=60,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert r.status_code == 200
    finally:
        gate.touch()
        server.should_exit = True
        thread.join(30)


def test_missing_weights_keep_ready_503_and_say_why(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A model that cannot load never turns ready, and /ready says why; with `liveness_failed_after_s: null`
    liveness stays up. (`gateway serve` refuses such a config before it starts; an app built from it serves.)"""
    monkeypatch.delenv("REDIS_URL", raising=False)
    missing = tmp_path / "none.gguf"
    app = create_app(GatewayConfig(server=ServerConfig(liveness_failed_after_s=None),
                                   models=[LlamaCppModelConfig(card=MODEL, model_path=str(missing))]))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        deadline = time.monotonic() + 30
        while True:  # the load fails in the background, soon after start
            r = httpx.get(f"{base}/ready", timeout=5)
            assert r.status_code == 503, r.text
            backend = r.json()["backends"][MODEL]
            if backend["state"] != "loading" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        body = r.json()
        assert body["status"] == "not_ready" and body["not_ready"] == [MODEL], body
        assert backend["state"] == "failed" and backend["required"] is True, backend
        assert backend["detail"] == f"model_path {missing} does not exist", backend
        assert r.headers["retry-after"] == "2"
        assert "failed_for_s" in backend, backend
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 503, chat.text
        err = chat.json()["error"]
        assert err["code"] == "model_not_ready" and "failed" in err["message"], err
    finally:
        server.should_exit = True
        thread.join(30)


# -- upstreams: they degrade the pod, they do not unready it ----------------------------------------------


def upstream_config(s: Sims) -> dict:
    return {
        "server": {"watch_config": False},
        "models": [],
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{s.b.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"},
                        {"name": "b", "provider": "vllm-b", "model": "vllm-model"}],
        "routes": [{"name": "remote", "deployments": ["a"]},
                   {"name": "strict", "deployments": ["b"], "ready_requires_upstreams": True}],
        "health_checks": {"interval_s": 0.2, "timeout_s": 0.5},
    }


def ready(g: GatewayProcess, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{g.root_url}/ready", timeout=5, headers=headers)


def ask(g: GatewayProcess, model: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", timeout=10, headers=headers,
                      json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4})


def test_an_upstream_outage_degrades_the_pod_but_leaves_it_ready(sims: Sims) -> None:
    """Every replica sees an upstream's outage at once: /ready stays 200 and names the route as degraded, so
    the Service keeps the pods that serve every other route. A route that opts in counts as before."""
    sims.reset()
    try:
        with GatewayProcess(upstream_config(sims)) as g:
            first = ready(g)
            assert first.status_code == 200 and first.json()["status"] == "ready", first.text
            sims.a.healthy = False  # vLLM's /health fails; the health checks take `a` out
            down = wait_until(lambda: (r := ready(g)).json()["degraded"] and r, timeout=30, what="route degraded")
            body = down.json()
            assert down.status_code == 200 and "retry-after" not in down.headers, down.text
            assert body["status"] == "degraded" and body["degraded"] == ["route:remote"] and body["not_ready"] == []
            assert body["routes"]["remote"] == {"usable_deployments": 0, "deployments": 1}
            assert body["deployments"]["a"]["healthy"] is False
            assert ask(g, "strict").status_code == 200, "the other routes serve on"

            sims.a.healthy, sims.b.healthy = True, False
            unready = wait_until(lambda: (r := ready(g)).status_code == 503 and r, timeout=30, what="503")
            body = unready.json()
            assert body["not_ready"] == ["route:strict"] and body["degraded"] == [], body
            assert body["routes"]["strict"] == {"usable_deployments": 0, "deployments": 1,
                                                "ready_requires_upstreams": True}
            assert unready.headers["retry-after"] == "2"
            assert httpx.get(f"{g.root_url}/health", timeout=5).status_code == 200, "never a liveness matter"

            sims.b.healthy = True
            back = wait_until(lambda: (r := ready(g)).status_code == 200 and r, timeout=30, what="ready again")
            assert back.json()["status"] == "ready" and back.json()["degraded"] == []
    finally:
        sims.reset()


# -- a model that cannot load: liveness -------------------------------------------------------------------


def test_a_model_that_cannot_load_fails_liveness_after_the_grace(sims: Sims, tmp_path) -> None:
    """`gateway serve` with a corrupt model file: the model is `failed`, the pod unready but alive (its other
    routes serve); after `server.liveness_failed_after_s` /health turns 503 so the kubelet restarts it.
    With keys on, a probe without the admin key gets the status codes and nothing that names a model."""
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"this is not a GGUF file\n" * 64)
    grace_s = 3.0
    cfg = upstream_config(sims)
    cfg["server"]["liveness_failed_after_s"] = grace_s
    cfg["models"] = [{"card": MODEL, "model_path": str(corrupt), "n_ctx": 512}]
    cfg["routes"] = [{"name": "remote", "deployments": ["a"]}]
    master, admin = "sk-master-readiness", "admin-readiness"
    keys = {"LLM_GATEWAY_MASTER_KEY": master, "LLM_GATEWAY_ADMIN_KEY": admin}
    as_admin, as_master = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {master}"}
    sims.reset()
    try:
        with GatewayProcess(cfg, env=keys, require_ready=False) as g:
            def failed_seen() -> float | None:
                asked = time.monotonic()  # the gateway's own clock starts within this call, not before it
                return asked if ready(g, as_admin).json()["backends"][MODEL]["state"] == "failed" else None

            first_seen = wait_until(failed_seen, timeout=60, what="the model failed")
            health = httpx.get(f"{g.root_url}/health", timeout=5)
            assert health.status_code == 200 and health.json() == {"status": "ok"}, "within the grace"
            r = ready(g, as_admin)
            body = r.json()
            assert r.status_code == 503 and body["not_ready"] == [MODEL], body
            assert body["backends"][MODEL]["failed_for_s"] < grace_s, body["backends"][MODEL]
            assert ask(g, "remote", as_master).status_code == 200, "alive: the upstream route serves"

            sick = wait_until(lambda: (h := httpx.get(f"{g.root_url}/health", timeout=5)).status_code == 503 and h,
                              timeout=30, interval=0.1, what="/health 503")
            assert time.monotonic() - first_seen >= grace_s, "not before the grace"
            assert sick.json() == {"status": "unhealthy"}, "anonymous: no model names"
            detail = httpx.get(f"{g.root_url}/health", headers=as_admin, timeout=5)
            assert detail.status_code == 503
            assert detail.json() == {"status": "unhealthy", "failed": [MODEL], "failed_after_s": grace_s}
            assert httpx.head(f"{g.root_url}/health", timeout=5).status_code == 503
            anonymous = ready(g)
            assert anonymous.status_code == 503 and anonymous.json() == {"status": "not_ready"}
            assert ask(g, "remote", as_master).status_code == 200, "still serving until the kubelet restarts it"
    finally:
        sims.reset()
