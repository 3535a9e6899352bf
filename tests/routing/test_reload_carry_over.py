"""README, "Hot reload": requests already running finish on the old config; breakers, latencies and loaded
models carry over.

Both ways in are used: `POST /admin/reload` and the file watcher (`server.watch_config`).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import httpx
import pytest
import yaml

from tests.conftest import MODEL
from tests.routing_env import Sims, admin, base_config, sims, start_gateway  # noqa: F401  (fixture)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Tell me about reloads"}]
EXPECTED = canonical_reply(MSGS)


def config_for(s: Sims) -> dict[str, Any]:
    cfg = base_config(s)
    cfg["breaker"] = {"failure_threshold": 3, "cooldown_s": 60.0, "min_requests": 50}  # open for the whole test
    return cfg


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    with start_gateway(sims, config_for(sims)) as g:
        yield g
    sims.reset()


def sse(raw: bytes) -> tuple[str, list[str], bool]:
    """(text, error messages, [DONE] seen) of an SSE body."""
    text, errors, done = [], [], False
    for block in raw.decode().split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block[6:]
        if data == "[DONE]":
            done = True
            continue
        chunk = json.loads(data)
        if "error" in chunk:
            errors.append(chunk["error"]["message"])
        for choice in chunk.get("choices") or []:
            text.append(choice["delta"].get("content") or "")
    return "".join(text), errors, done


def write_config(g: GatewayProcess, cfg: dict[str, Any]) -> None:
    g.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")


def version(g: GatewayProcess) -> int:
    return admin(g, "GET", "/config").json()["version"]


def deployments(g: GatewayProcess) -> dict[str, Any]:
    return admin(g, "GET", "/deployments").json()["deployments"]


def post(g: GatewayProcess, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", json={"model": model, "messages": MSGS, **extra}, timeout=60)


def test_a_stream_in_flight_finishes_on_the_config_it_started_with(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.chunk_delay(0.3))  # about 5 s of stream: it outlasts the reload on a busy machine
    moved = config_for(sims)
    moved["providers"]["vllm-a"]["base_url"] = "http://127.0.0.1:9/v1"  # the new config sends "a" nowhere
    with httpx.Client(timeout=60) as client:
        # no-continue: a stream that broke would end with an in-band error, not be mended elsewhere
        with client.stream("POST", f"{gw.base_url}/chat/completions",
                           json={"model": "no-continue", "messages": MSGS, "stream": True}) as r:
            assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "a"
            chunks = r.iter_raw()
            body = next(chunks)  # the answer has started
            write_config(gw, moved)
            reload = admin(gw, "POST", "/reload")
            assert reload.status_code == 200 and reload.json()["ok"], reload.text
            assert version(gw) >= 2
            assert sims.a.inflight == 1, "the stream was still running when the new config took over"
            body += b"".join(chunks)
    text, errors, done = sse(body)
    assert errors == [] and done and text == EXPECTED, (text, errors, done)
    assert sims.b.count("/v1/chat/completions") == 0, "the old stream was not moved or mended"
    # New requests see the new config: "a" is unreachable now, so "b" answers.
    after = post(gw, "no-continue")
    assert after.status_code == 200 and after.headers["x-gateway-deployment"] == "b", after.headers


def test_breakers_and_latencies_of_unchanged_deployments_carry_over(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.status(500))
    for _ in range(3):  # failure_threshold 3; b answers every time
        assert post(gw, "chat-default").status_code == 200
    before = deployments(gw)
    assert before["a"]["breaker"]["state"] == "open" and before["b"]["ewma_ttft_ms"] is not None, before
    sims.a.set_fault(None)  # a would answer now, but its breaker is open for another minute
    edited = config_for(sims)
    edited["routes"].append({"name": "added", "deployments": ["gpt"]})  # a and b stay as they were
    write_config(gw, edited)  # the file watcher picks it up
    wait_until(lambda: version(gw) >= 2, timeout=30, interval=0.1, what="the watcher's reload")
    assert post(gw, "added").status_code == 200, "the edit is live"
    after = deployments(gw)
    assert after["a"]["breaker"] == before["a"]["breaker"], (before["a"], after["a"])
    assert (after["a"]["failures"], after["b"]["successes"]) == (before["a"]["failures"], before["b"]["successes"])
    assert after["b"]["ewma_ttft_ms"] == before["b"]["ewma_ttft_ms"], "the learned latency carried over"
    r = post(gw, "chat-default")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b" and r.headers["x-gateway-attempts"] == "1"
    assert sims.a.count("/v1/chat/completions") == 3, "the open breaker kept traffic off a after the reload"


@pytest.mark.e2e
def test_a_loaded_local_model_is_not_loaded_again_and_its_stream_finishes(sims: Sims) -> None:
    sims.reset()
    cfg: dict[str, Any] = {
        "server": {"watch_interval_s": 0.2},
        "models": [{"card": MODEL, "n_ctx": 1024}],
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "cpu", "provider": "local", "model": MODEL}],
        "routes": [{"name": "local", "deployments": ["cpu"]}],
        "health_checks": {"interval_s": 5},
    }
    with start_gateway(sims, cfg, require_ready=True) as g:
        def model() -> dict[str, Any]:
            return httpx.get(f"{g.root_url}/ready", timeout=10).json()["backends"][MODEL]

        first = model()
        (engine,) = first["engines"]
        body = {"model": "local", "messages": [{"role": "user", "content": "Count slowly."}], "stream": True,
                "max_tokens": 200, "ignore_eos": True, "temperature": 0}
        with httpx.Client(timeout=120) as client:
            with client.stream("POST", f"{g.base_url}/chat/completions", json=body) as r:
                assert r.status_code == 200
                chunks = r.iter_raw()
                raw = next(chunks)
                edited = {**cfg, "deployments": [*cfg["deployments"],
                                                 {"name": "gpu", "provider": "vllm-a", "model": "vllm-model"}],
                          "routes": [*cfg["routes"], {"name": "remote", "deployments": ["gpu"]}]}
                write_config(g, edited)  # the models are as they were
                wait_until(lambda: version(g) >= 2, timeout=30, interval=0.1, what="the watcher's reload")
                during = model()
                assert [(e["pid"], e["restarts"]) for e in during.get("engines", [])] == [
                    (engine["pid"], engine["restarts"])], f"the model is being loaded again: {during}"
                assert during["stats"]["completed"] == first["stats"]["completed"], \
                    "the stream was still running when the new config took over"
                raw += b"".join(chunks)
        text, errors, done = sse(raw)
        assert errors == [] and done and text, (text[:200], errors, done)
        after = wait_until(lambda: (m := model())["state"] == "ready" and m, timeout=120, interval=0.2)
        assert [(e["pid"], e["restarts"]) for e in after["engines"]] == [(engine["pid"], engine["restarts"])], \
            "the same engine process serves on: the model was not loaded again"
        assert after["stats"]["completed"] == first["stats"]["completed"] + 1, "and its counters went on"
        assert post(g, "remote").status_code == 200
        assert post(g, "local", max_tokens=4).status_code == 200
    sims.reset()
