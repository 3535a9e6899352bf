"""`/ready` is 503 while the model loads and 200 once it is loaded and warm; `/health` answers throughout."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from backends.llamacpp.host import HOLD_ENV
from gateway.app import create_app
from routing.config import GatewayConfig, LlamaCppModelConfig
from tests.conftest import MODEL
from tests.server import free_port

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
    """A model that cannot load never turns ready, and /ready says why; liveness stays up.
    (`gateway serve` refuses such a config before it starts; an app built from it serves, unready.)"""
    monkeypatch.delenv("REDIS_URL", raising=False)
    missing = tmp_path / "none.gguf"
    app = create_app(GatewayConfig(models=[LlamaCppModelConfig(card=MODEL, model_path=str(missing))]))
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
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        chat = httpx.post(f"{base}/v1/chat/completions", timeout=10,
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 503, chat.text
        err = chat.json()["error"]
        assert err["code"] == "model_not_ready" and "failed" in err["message"], err
    finally:
        server.should_exit = True
        thread.join(30)
