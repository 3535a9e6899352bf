"""Failover the client never sees: retries, breakers, stream continuation, the last resort."""

from __future__ import annotations

import time
from typing import Iterator

import httpx
import openai
import pytest

from tests.routing_env import Sims, admin, base_config, gw, sims, start_gateway  # noqa: F401  (fixtures)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Tell me about foxes"}]
EXPECTED = canonical_reply(MSGS)


# The breaker tests' cooldown: long enough that the requests checking an open breaker fit in it on a busy
# machine (the shared config's 1 s did not leave much room), short enough to wait for.
COOLDOWN_S = 3.0


@pytest.fixture
def breaker_gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    config = base_config(sims)
    config["breaker"] = {**config["breaker"], "cooldown_s": COOLDOWN_S}
    with start_gateway(sims, config) as g:
        yield g
    sims.reset()


def sleep_out_the_cooldown(opened: float) -> None:
    """Wait (this is the point: time must pass) until the cooldown that began before `opened` is over."""
    time.sleep(max(0.0, opened + COOLDOWN_S + 0.2 - time.monotonic()))


def deployment_load(g: GatewayProcess, name: str) -> dict:
    return admin(g, "GET", "/deployments").json()["deployments"][name]["load"]


def last(sim):  # type: ignore[no-untyped-def]
    """The sim's latest model request (health checks and /metrics scrapes are recorded too)."""
    return [r for r in sim.requests if r.path.startswith("/v1/") and r.method == "POST"][-1]


def sdk(g: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=30)


def post(g: GatewayProcess, model: str, **extra) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", json={"model": model, "messages": MSGS, **extra}, timeout=30)


def test_primary_500_fails_over_to_secondary(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(500))
    r = post(gw, "chat-default")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == EXPECTED
    assert r.headers["x-gateway-deployment"] == "b"
    assert r.headers["x-gateway-attempts"] == "2"
    assert float(r.headers["x-gateway-overhead-ms"]) >= 0
    assert sims.a.count("/v1/chat/completions") == 1 and sims.b.count("/v1/chat/completions") == 1


def test_primary_hang_past_read_timeout_fails_over_within_deadline(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.hang())
    started = time.monotonic()
    r = sdk(gw).chat.completions.with_raw_response.create(model="chat-default", messages=MSGS)
    elapsed = time.monotonic() - started
    assert r.http_response.status_code == 200
    assert r.parse().choices[0].message.content == EXPECTED
    assert r.headers["x-gateway-deployment"] == "b"
    assert elapsed < 5, f"took {elapsed:.1f}s; the route's read timeout is 1 s and its deadline 10 s"


@pytest.mark.parametrize("fault", [Fault.reset(), Fault.status(429, retry_after=0.2), Fault.status(503)])
def test_transient_failures_fail_over(gw: GatewayProcess, sims: Sims, fault: Fault) -> None:
    sims.a.add_fault(fault)
    r = post(gw, "chat-default")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"


def test_client_error_from_backend_is_not_retried(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(400, message="bad sampling value"))
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gw).chat.completions.create(model="chat-default", messages=MSGS)
    body = err.value.body
    assert isinstance(body, dict) and "bad sampling value" in body["message"]
    assert body["code"] is None or isinstance(body["code"], str), "vLLM's integer code is normalised"
    assert sims.a.count("/v1/chat/completions") == 1
    assert sims.b.count("/v1/chat/completions") == 0, "a 4xx must not be retried elsewhere"


def test_breaker_opens_stops_traffic_half_opens_and_closes(breaker_gw: GatewayProcess, sims: Sims) -> None:
    gw = breaker_gw
    sims.a.set_fault(Fault.status(500))
    for _ in range(3):  # failure_threshold is 3; the client never notices
        assert post(gw, "chat-default").status_code == 200
    opened = time.monotonic()
    assert sims.a.count("/v1/chat/completions") == 3
    state = admin(gw, "GET", "/deployments").json()["deployments"]["a"]["breaker"]
    assert state["state"] == "open"
    checked = 0
    while checked < 5 or time.monotonic() - opened < COOLDOWN_S * 0.7:  # open for its cooldown: no traffic to a
        r = post(gw, "chat-default")
        assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"
        assert r.headers["x-gateway-attempts"] == "1"
        checked += 1
    assert sims.a.count("/v1/chat/completions") == 3
    assert time.monotonic() - opened < COOLDOWN_S, "too slow to check the open breaker within its cooldown"
    sims.a.set_fault(None)
    sleep_out_the_cooldown(opened)  # the next request is the single half-open probe
    r = post(gw, "chat-default")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "a"
    assert admin(gw, "GET", "/deployments").json()["deployments"]["a"]["breaker"]["state"] == "closed"
    assert post(gw, "chat-default").headers["x-gateway-deployment"] == "a"


def test_breaker_probe_failure_reopens(breaker_gw: GatewayProcess, sims: Sims) -> None:
    gw = breaker_gw
    sims.a.set_fault(Fault.status(500))
    for _ in range(3):
        post(gw, "chat-default")
    sleep_out_the_cooldown(time.monotonic())
    assert post(gw, "chat-default").status_code == 200  # the probe fails, b answers
    assert sims.a.count("/v1/chat/completions") == 4
    assert admin(gw, "GET", "/deployments").json()["deployments"]["a"]["breaker"]["state"] == "open"


def test_breaker_finds_a_recovered_primary_soon_after_a_failed_probe(sims: Sims) -> None:
    """The issue's scenario scaled down: the primary answers 503 for 8 s, a request every 0.5 s. The breaker opens
    at the third failure (~1 s) and probes at ~7 s, while `a` is still down. The old breaker then stayed open
    another full cooldown (to ~13 s, 5 s after recovery); the probe schedule (0.25 s doubling to 1 s) finds `a`
    within about 1.5 s of recovering. (The sim's /health stays up: the schedule works without health checks.)"""
    sims.reset()
    config = base_config(sims)
    config["breaker"] = {**config["breaker"], "cooldown_s": 6.0, "probe_initial_s": 0.25, "probe_max_s": 1.0}
    down_s, every = 8.0, 0.5
    with start_gateway(sims, config) as g:
        sims.a.set_fault(Fault.status(503))
        start = time.monotonic()
        served: list[tuple[float, str]] = []
        recovered: float | None = None
        hits_while_down = 0
        for k in range(int(20 / every)):
            time.sleep(max(0.0, start + k * every - time.monotonic()))  # ticks, however long a request takes
            if recovered is None and time.monotonic() - start >= down_s:
                hits_while_down = sims.a.count("/v1/chat/completions")
                sims.a.set_fault(None)
                recovered = time.monotonic()
            sent = time.monotonic()
            r = post(g, "chat-default")
            assert r.status_code == 200, r.text
            served.append((sent - start, r.headers["x-gateway-deployment"]))
            if recovered is not None and r.headers["x-gateway-deployment"] == "a":
                break
    sims.reset()
    assert recovered is not None and served[-1][1] == "a", f"never back on a: {served}"
    back_after = start + served[-1][0] - recovered
    assert back_after <= 3.0, f"back on a {back_after:.1f}s after it recovered: {served}"
    # 3 failures open the breaker; then probes at ~7 s and the schedule's steps: a trickle, not every request
    assert hits_while_down <= 3 + 4, f"{hits_while_down} requests reached a while it was down: {served}"
    assert sum(1 for _, d in served if d == "b") >= 8, served


def test_least_busy_prefers_the_shorter_vllm_queue(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.waiting, sims.b.waiting = 12, 0
    # health checks scrape /metrics every 0.2 s: wait until both scrapes show the new queues
    wait_until(lambda: deployment_load(gw, "a")["waiting"] == 12 and deployment_load(gw, "b")["waiting"] == 0,
               timeout=30, interval=0.1, what="the scrape of a's queue")
    served = [post(gw, "least-busy").headers["x-gateway-deployment"] for _ in range(5)]
    assert served == ["b"] * 5
    sims.a.waiting, sims.b.waiting = 0, 7
    sims.b.kv_cache_usage = 0.9
    wait_until(lambda: deployment_load(gw, "a")["waiting"] == 0 and deployment_load(gw, "b")["waiting"] == 7
               and deployment_load(gw, "b")["kv_cache_usage"] == 0.9, timeout=30, interval=0.1,
               what="the scrape of b's queue")
    assert [post(gw, "least-busy").headers["x-gateway-deployment"] for _ in range(5)] == ["a"] * 5


def test_unhealthy_deployment_is_avoided_and_reported(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.healthy = False
    wait_until(lambda: admin(gw, "GET", "/deployments").json()["deployments"]["a"]["healthy"] is False,
               timeout=30, interval=0.1, what="the health check noticing")
    r = post(gw, "chat-default")
    assert r.headers["x-gateway-deployment"] == "b"
    assert sims.a.count("/v1/chat/completions") == 0
    ready = httpx.get(f"{gw.root_url}/ready").json()
    assert ready["deployments"]["a"]["healthy"] is False


def test_stream_broken_after_3_chunks_is_continued_by_the_fallback(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    stream = sdk(gw).chat.completions.create(model="chat-default", messages=MSGS, stream=True,
                                             stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == EXPECTED
    assert len({c.id for c in chunks}) == 1, "the continuation looks like one stream"
    roles = [c for c in chunks if c.choices and c.choices[0].delta.role]
    assert len(roles) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    continued = [r.body for r in sims.b.requests if r.path == "/v1/chat/completions"]
    assert continued and continued[0]["continue_final_message"] is True
    assert continued[0]["messages"][-1]["role"] == "assistant"


def test_stream_break_without_continuation_ends_with_in_band_error(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    stream = sdk(gw).chat.completions.create(model="no-continue", messages=MSGS, stream=True)
    got = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got.append(chunk)
    assert 1 <= len(got) <= 3
    assert not any(c.choices and c.choices[0].finish_reason for c in got), "never presented as complete"
    # On the wire: the in-band error event comes first, then [DONE].
    sims.a.add_fault(Fault.cut_stream(after_chunks=2))
    raw = httpx.post(f"{gw.base_url}/chat/completions", timeout=30,
                     json={"model": "no-continue", "messages": MSGS, "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")
    assert raw.index('data: {"error"') < raw.index("data: [DONE]")


def test_stream_failure_before_first_token_is_invisible(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(502))
    chunks = list(sdk(gw).chat.completions.create(model="chat-default", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == EXPECTED


def test_every_deployment_down_gives_the_marked_last_resort(gw: GatewayProcess) -> None:
    r = post(gw, "degraded")
    assert r.status_code == 200
    assert r.headers["x-gateway-degraded"] == "static"
    assert r.json()["choices"][0]["message"]["content"] == "We are degraded right now."
    s = httpx.post(f"{gw.base_url}/chat/completions", timeout=30,
                   json={"model": "degraded", "messages": MSGS, "stream": True})
    assert s.headers["x-gateway-degraded"] == "static" and s.text.rstrip().endswith("data: [DONE]")


def test_route_without_last_resort_fails_with_retryable_error(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.status(503))
    sims.b.set_fault(Fault.status(503))
    with pytest.raises(openai.InternalServerError) as err:
        sdk(gw).chat.completions.create(model="chat-default", messages=MSGS)
    assert err.value.status_code == 503


def test_conditional_rules_pick_deployments(gw: GatewayProcess, sims: Sims) -> None:
    plain = post(gw, "tiered")
    assert plain.headers["x-gateway-deployment"] == "a"
    gold = httpx.post(f"{gw.base_url}/chat/completions", headers={"x-tier": "gold"}, timeout=30,
                      json={"model": "tiered", "messages": MSGS})
    assert gold.headers["x-gateway-deployment"] == "b"
    tagged = post(gw, "tiered", metadata={"team": "research"})
    assert tagged.headers["x-gateway-deployment"] == "claude"
    long = httpx.post(f"{gw.base_url}/chat/completions", timeout=30, json={
        "model": "tiered", "messages": [{"role": "user", "content": "word " * 600}]})
    assert long.headers["x-gateway-deployment"] == "gpt", "long prompts go to the big-context deployment"


def test_lowest_latency_learns_the_faster_replica(gw: GatewayProcess, sims: Sims) -> None:
    import yaml

    from tests.routing_env import base_config, with_changes

    cfg = with_changes(base_config(sims), **{"least-busy": {"strategy": "lowest-latency"}})
    gw.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    deadline = time.monotonic() + 5
    while admin(gw, "GET", "/config").json()["version"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    sims.a.set_fault(Fault.latency(0.3))
    for _ in range(4):  # both get measured
        post(gw, "least-busy")
    served = [post(gw, "least-busy").headers["x-gateway-deployment"] for _ in range(5)]
    assert served.count("b") >= 4, served
