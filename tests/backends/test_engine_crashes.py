"""What an engine crash costs: real engine processes, the real model, real signals.

A local model's engine is killed (SIGKILL, as the OOM killer does) and crashes
(SIGSEGV, as a native bug does) while 8 requests, streaming and not, are in
it, each on both routes. On a route with a second deployment (a simulated vLLM) every request
still gets a complete answer: non-streaming ones fail over, streams continue
there. On a route without one, non-streaming requests get a clean 503 with
Retry-After and streams end with an in-band error and `[DONE]`, never a
finish_reason. Meanwhile requests to an upstream route on the same gateway
all succeed, `/ready` goes through `restarting` (with the signal's name and
the restart count) and back, and the model serves again within RECOVERY_S.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest

from backends.llamacpp.host import HOLD_ENV
from tests.conftest import MODEL
from tests.server import GatewayProcess
from tests.sim import OpenAISim, VLLMSim

pytestmark = [pytest.mark.e2e, pytest.mark.process]

OPENAI_KEY = "sk-upstream-openai-test"
RECOVERY_S = 30.0  # the stated bound: killed engine to serving again (backoff <= 1 s, load + warm-up ~2 s here)
NO_CACHE = {"Cache-Control": "no-store"}  # the same greedy requests again would be response-cache hits
LONG = 160  # tokens per request: long enough to be mid-answer when the engine dies
PROMPTS = ["Tell me a long story about a lighthouse.", "Describe the ocean in detail.",
           "Write about a city at night.", "Explain how rivers form.", "A story about a fox.",
           "Describe a mountain village.", "Write about the first snow.", "Tell me about old trains."]


def config(vllm: VLLMSim, gpt: OpenAISim) -> dict[str, Any]:
    timeouts = {"connect_s": 2.0, "read_s": 30.0, "total_s": 120.0}
    return {
        "models": [{"card": MODEL, "n_ctx": 2048, "parallel": 8, "max_queue": 16, "request_timeout_s": 120}],
        "providers": {"gpu": {"kind": "vllm", "base_url": f"{vllm.url}/v1"},
                      "openai": {"kind": "openai", "base_url": f"{gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"}},
        "deployments": [{"name": "cpu", "provider": "local", "model": MODEL},
                        {"name": "gpu", "provider": "gpu", "model": "vllm-model"},
                        {"name": "gpt", "provider": "openai", "model": "sim-model"}],
        "routes": [{"name": "with-fallback", "deployments": ["cpu", "gpu"], "timeouts": timeouts,
                    "retry": {"max_attempts": 3, "backoff_base_s": 0.05}},
                   {"name": "upstream", "deployments": ["gpt"], "timeouts": timeouts}],
        "health_checks": {"interval_s": 1.0, "timeout_s": 1.0},
    }


@pytest.fixture(scope="module")
def sims() -> Iterator[tuple[VLLMSim, OpenAISim]]:
    vllm, gpt = VLLMSim("gpu").start(), OpenAISim("gpt", api_key=OPENAI_KEY).start()
    yield vllm, gpt
    vllm.stop()
    gpt.stop()


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file is missing, a starting engine process waits before it loads (HOLD_ENV)."""
    path = tmp_path_factory.mktemp("hold") / "go"
    path.touch()
    return path


@pytest.fixture(scope="module")
def gw(sims: tuple[VLLMSim, OpenAISim], gate: Path) -> Iterator[GatewayProcess]:
    with GatewayProcess(config(*sims), env={"SIM_OPENAI_KEY": OPENAI_KEY, HOLD_ENV: str(gate)}) as g:
        yield g


def ready_body(gw: GatewayProcess) -> dict[str, Any]:
    return httpx.get(f"{gw.root_url}/ready", timeout=5).json()


def engine(gw: GatewayProcess) -> dict[str, Any]:
    return ready_body(gw)["backends"][MODEL]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s")


class Upstream:
    """Requests to the upstream route, one after another, for as long as the test runs."""

    def __init__(self, gw: GatewayProcess) -> None:
        self.sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=10)
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self.sdk.chat.completions.create(model="upstream", stream=True,
                                                          messages=[{"role": "user", "content": "ping"}])
                chunks = list(stream)
                assert chunks and chunks[-1].choices[0].finish_reason == "stop"
                self.ok += 1
            except Exception as exc:  # noqa: BLE001 - any failure is what this records
                self.failures.append(repr(exc))
            time.sleep(0.02)

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(15)


class Traffic:
    """8 concurrent requests to one route: 4 streams and 4 plain ones, each LONG tokens."""

    def __init__(self, gw: GatewayProcess, model: str) -> None:
        self.gw = gw
        self.model = model
        self.streamed = [0] * 4  # content chunks each stream has received
        self.results: list[dict[str, Any]] = [{} for _ in range(8)]
        self._pool = ThreadPoolExecutor(8)
        self._futures: list[Any] = []

    def start(self) -> Traffic:
        for i in range(8):
            self._futures.append(self._pool.submit(self._stream if i < 4 else self._plain, i))
        return self

    def _body(self, i: int, stream: bool) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": PROMPTS[i]}], "max_tokens": LONG,
                "ignore_eos": True, "temperature": 0, "stream": stream}

    def _stream(self, i: int) -> None:
        out = self.results[i]
        out["frames"] = frames = []
        with httpx.stream("POST", f"{self.gw.base_url}/chat/completions", json=self._body(i, True),
                          headers=NO_CACHE, timeout=httpx.Timeout(120, read=60)) as r:
            out["status"] = r.status_code
            out["headers"] = dict(r.headers)
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                frames.append(line[6:])
                if '"content"' in line:
                    self.streamed[i] += 1
        out["ended_at"] = time.monotonic()

    def _plain(self, i: int) -> None:
        out = self.results[i]
        r = httpx.post(f"{self.gw.base_url}/chat/completions", json=self._body(i, False), headers=NO_CACHE,
                       timeout=120)
        out.update(status=r.status_code, headers=dict(r.headers), body=r.json(), ended_at=time.monotonic())

    def wait(self, timeout: float) -> None:
        for f in self._futures:
            f.result(timeout=timeout)  # raises if a request hung past the timeout or the client broke
        self._pool.shutdown()


def in_flight(gw: GatewayProcess, traffic: Traffic) -> None:
    """Every stream has content, and all 8 requests are sequences in the engine."""
    try:
        wait_for(lambda: all(n >= 3 for n in traffic.streamed) and engine(gw)["stats"].get("active_sequences") == 8,
                 60, "8 requests in flight")
    except AssertionError:
        raise AssertionError(f"not 8 in flight: streamed {traffic.streamed}, engine {engine(gw)}, "
                             f"results {[{k: v for k, v in r.items() if k != 'frames'} for r in traffic.results]}, "
                             f"deployments {ready_body(gw)['routes']}") from None


def kill_engine(gw: GatewayProcess, sig: signal.Signals) -> tuple[int, float]:
    before = engine(gw)
    (instance,) = before["engines"]
    os.kill(instance["pid"], sig)
    return before["restarts"], time.monotonic()


def observe_restart(gw: GatewayProcess, restarts_before: int, reason: str, killed_at: float) -> list[str]:
    """The states /ready shows from the kill until the model is ready again; asserts the bound."""
    seen: list[str] = []
    deadline = killed_at + RECOVERY_S
    while time.monotonic() < deadline:
        e = engine(gw)
        if not seen or seen[-1] != e["state"]:
            seen.append(e["state"])
        if e["state"] == "restarting":
            assert e["last_exit"] == reason and e["restarts"] == restarts_before + 1, e
            # (the engine itself may already say ready for the few ms before this worker reconnects)
            assert e["engines"][0]["state"] in ("restarting", "ready"), e
        if e["state"] == "ready" and e["restarts"] == restarts_before + 1:
            assert e["engines"][0]["last_exit"] == reason
            return seen
        time.sleep(0.02)
    raise AssertionError(f"the model did not serve again within {RECOVERY_S}s after {reason}; states: {seen}")


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV], ids=["SIGKILL", "SIGSEGV"])


@SIGNALS
def test_a_dead_engine_fails_over_and_continues_streams(gw: GatewayProcess, sims: tuple[VLLMSim, OpenAISim],
                                                        sig: signal.Signals) -> None:
    vllm, _ = sims
    vllm.clear()
    wait_for(lambda: engine(gw)["state"] == "ready", RECOVERY_S, "ready before the test")
    with Upstream(gw) as upstream:
        traffic = Traffic(gw, "with-fallback").start()
        in_flight(gw, traffic)
        restarts, killed_at = kill_engine(gw, sig)
        traffic.wait(timeout=60)
        states = observe_restart(gw, restarts, sig.name, killed_at)
        assert "restarting" in states, states
        time.sleep(0.5)
    assert not upstream.failures, upstream.failures[:3]
    assert upstream.ok >= 5
    for i, out in enumerate(traffic.results):
        assert out["status"] == 200, out
        assert out["ended_at"] - killed_at < 30, "a request took too long to be rescued"
        if i < 4:  # streams: continued on vLLM, one stream, one id, a real finish
            frames = out["frames"]
            assert frames[-1] == "[DONE]" and '"error"' not in "".join(frames), frames[-3:]
            assert any('"finish_reason":"length"' in f or '"finish_reason":"stop"' in f for f in frames)
        else:  # plain requests: answered by the fallback, complete
            assert out["headers"]["x-gateway-deployment"] == "gpu", out["headers"]
            assert out["body"]["choices"][0]["finish_reason"] in ("stop", "length")
    assert vllm.count("/v1/chat/completions") >= 8
    continued = [r for r in vllm.requests if r.path == "/v1/chat/completions" and r.body.get("continue_final_message")]
    assert len(continued) == 4, "each broken stream was continued from its partial answer"
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=60)
    again = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert again.choices[0].finish_reason in ("stop", "length")


@SIGNALS
def test_a_dead_engine_without_fallback_gives_clean_errors(gw: GatewayProcess, sig: signal.Signals) -> None:
    sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=60)
    wait_for(lambda: engine(gw)["state"] == "ready", RECOVERY_S, "ready before the test")
    with Upstream(gw) as upstream:
        traffic = Traffic(gw, MODEL).start()
        in_flight(gw, traffic)
        restarts, killed_at = kill_engine(gw, sig)
        traffic.wait(timeout=30)
        observe_restart(gw, restarts, sig.name, killed_at)
        time.sleep(0.5)
    assert not upstream.failures, upstream.failures[:3]
    for i, out in enumerate(traffic.results):
        assert out["ended_at"] - killed_at < 10, "a request hung after the crash"
        if i < 4:  # the stream had started: an in-band error, then [DONE]; never a finish_reason
            frames = out["frames"]
            assert out["status"] == 200 and frames[-1] == "[DONE]", frames[-3:]
            assert '"engine_unavailable"' in frames[-2], frames[-2]
            assert not any('"finish_reason":"' in f for f in frames), "a truncated answer passed off as complete"
        else:
            assert out["status"] == 503, out
            assert out["body"]["error"]["code"] == "engine_unavailable"
            assert int(out["headers"]["retry-after"]) >= 1
    # The SDK sees the same as an APIError mid-stream / a 503, and everything works again afterwards.
    r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")
    counted = engine(gw)["restarts_by_reason"][sig.name]
    assert counted >= 1
    metrics = httpx.get(f"{gw.root_url}/metrics", timeout=5).text.splitlines()
    # The whole sample line: the series with exactly this value (a substring could be a longer number's start).
    assert f'llm_gateway_engine_restarts_total{{model="{MODEL}",reason="{sig.name}"}} {counted:.1f}' in metrics, \
        [m for m in metrics if "engine" in m]
    assert f"died: {sig.name}" in gw.log_path.read_text(errors="replace")


def test_requests_while_restarting_are_answered_at_once(gw: GatewayProcess, gate: Path) -> None:
    """Between the crash and the new engine: the local route answers 503 + Retry-After at once, and the
    fallback route goes straight to vLLM (the local deployment is not waited for)."""
    wait_for(lambda: engine(gw)["state"] == "ready", RECOVERY_S, "ready before the test")
    gate.unlink()  # the next engine process waits before loading: the gateway stays `restarting`
    try:
        os.kill(engine(gw)["engines"][0]["pid"], signal.SIGKILL)
        wait_for(lambda: engine(gw)["state"] == "restarting", 5, "restarting")
        started = time.monotonic()
        sdk = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=10)
        with pytest.raises(openai.InternalServerError) as err:
            sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert err.value.status_code == 503 and err.value.code == "model_not_ready", err.value
        assert int(err.value.response.headers["retry-after"]) >= 1
        for _ in range(3):
            fb = httpx.post(f"{gw.base_url}/chat/completions", timeout=10,
                            json={"model": "with-fallback", "messages": [{"role": "user", "content": "x"}]})
            assert fb.status_code == 200 and fb.headers["x-gateway-deployment"] == "gpu"
            assert fb.headers["x-gateway-attempts"] == "1", "the restarting deployment goes last, not first"
        assert time.monotonic() - started < 5
        body = httpx.get(f"{gw.root_url}/ready", timeout=5).json()
        assert body["routes"][MODEL]["usable_deployments"] == 0
        assert body["routes"]["with-fallback"]["usable_deployments"] == 1
    finally:
        gate.touch()
    wait_for(lambda: engine(gw)["state"] == "ready", RECOVERY_S, "ready again")
    r = httpx.post(f"{gw.base_url}/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
    assert r.status_code == 200


# -- crashes while loading: safe mode ----------------------------------------------------------------------


def test_a_crash_while_warming_up_leads_to_safe_mode() -> None:
    cfg = {"models": [{"card": MODEL, "n_ctx": 1024}]}
    with GatewayProcess(cfg, env={"LLM_GATEWAY_ENGINE_FAULT": "segv-while-loading"}) as g:
        body = ready_body(g)
        e = body["backends"][MODEL]
        assert body["status"] == "ready" and e["state"] == "ready"
        assert e["safe_mode"] is True and "SIGSEGV" in e["safe_mode_reason"], e
        assert e["restarts"] == 1 and e["last_exit"] == "SIGSEGV"
        assert e["engines"][0]["safe_mode"] is True
        assert "CPU_REPACK" not in e["system"]["weights"] and "AMX" not in e["system"]["weights"]
        sdk = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0, timeout=60)
        r = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert "retrying once in safe mode" in g.logs()
        assert 'llm_gateway_engine_safe_mode{model="gemma-3-270m"} 1.0' in \
            httpx.get(f"{g.root_url}/metrics").text.splitlines()


def test_repeated_crashes_in_safe_mode_leave_the_model_failed() -> None:
    cfg = {"models": [{"card": MODEL, "n_ctx": 1024}]}
    with GatewayProcess(cfg, env={"LLM_GATEWAY_ENGINE_FAULT": "segv-always-while-loading"},
                        require_ready=False) as g:
        wait_for(lambda: engine(g)["state"] == "failed", 60, "failed")
        r = httpx.get(f"{g.root_url}/ready")
        assert r.status_code == 503 and MODEL in r.json()["not_ready"]
        e = r.json()["backends"][MODEL]
        assert "crashed while loading 2 times in safe mode" in e["detail"] and "SIGSEGV" in e["detail"], e
        assert e["safe_mode"] is True
        chat = httpx.post(f"{g.base_url}/chat/completions",
                          json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 503 and chat.json()["error"]["code"] == "model_not_ready"
        assert httpx.get(f"{g.root_url}/health").status_code == 200
        time.sleep(1.0)
        assert engine(g)["restarts"] == 2, "no crash loop: the supervisor gave up"
