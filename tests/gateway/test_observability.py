"""Metrics, request logs and traces, read the way an operator reads them."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.proc_tree import children, cmdline
from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import GatewayProcess, free_port
from tests.sim import Fault
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-observability-0123456789"
MSGS = [{"role": "user", "content": "Observe me"}]


def scrape(g: GatewayProcess) -> str:
    """/metrics as a Prometheus scraper configured with the admin key sees it."""
    r = httpx.get(f"{g.root_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return r.text


def samples(g: GatewayProcess) -> dict[tuple[str, tuple], float]:
    text = scrape(g)
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    """The series' value; a series that is not exported fails the test (it is not read as 0)."""
    key = (name, tuple(sorted(labels.items())))
    assert key in m, f"no series {name}{labels}; exported: {sorted(lbl for n, lbl in m if n == name)}"
    return m[key]


def total(m: dict, name: str, **labels: str) -> float:
    """The sum over every series of `name` with these labels; at least one must be exported."""
    found = [v for (n, lbl), v in m.items() if n == name and all(dict(lbl).get(k) == x for k, x in labels.items())]
    assert found, f"no series {name}{labels}"
    return sum(found)


def eventually(g: GatewayProcess, check: Callable[[dict], bool], what: str, timeout: float = 10) -> dict:
    """Scrape until `check(samples)` holds; the last samples."""
    deadline = time.monotonic() + timeout
    while not check(m := samples(g)):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)
    return m


def gateway(s: Sims, **extra: Any) -> GatewayProcess:
    cfg = base_config(s)
    cfg.update(extra.pop("config", {}))
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "LLM_GATEWAY_MASTER_KEY": MASTER}
    return GatewayProcess(cfg, env=env, require_ready=False, **extra)


def post(g: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                      json={"messages": MSGS, **body})


def request_lines(g: GatewayProcess) -> list[dict[str, Any]]:
    """The JSON request log lines written so far (they go out in batches, shortly after each request)."""
    out = []
    for line in g.logs().splitlines():
        if line.startswith('{"ts"'):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line still being written
                continue
            if record.get("event") == "request":
                out.append(record)
    return out


def test_metrics_follow_a_known_sequence_and_logs_never_hold_keys(sims: Sims) -> None:
    sims.reset()
    with gateway(sims) as g:
        virtual = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                             json={"alias": "observer"}).json()["key"]
        sims.a.add_fault(Fault.status(500))
        r1 = post(g, virtual, model="chat-default")  # a fails, b answers: one retry, one failover
        r2 = post(g, virtual, model="chat-default")  # a answers
        r3 = post(g, MASTER, model="claude", stream=True)  # a stream: counted when it ends
        r4 = post(g, virtual, model="no-such-model")  # 404: never a client-chosen label
        r5 = post(g, virtual, model="chat-default", temperature=9)  # 400
        r6 = post(g, "sk-gw-wrong", model="chat-default")  # 401
        assert [r.status_code for r in (r1, r2, r3, r4, r5, r6)] == [200, 200, 200, 404, 400, 401]
        m = samples(g)
        assert value(m, "llm_gateway_requests_total", route="chat-default", deployment="b", status="200",
                     cache="bypass") == 1
        assert value(m, "llm_gateway_requests_total", route="chat-default", deployment="a", status="200",
                     cache="bypass") == 1
        assert value(m, "llm_gateway_requests_total", route="claude", deployment="claude", status="200",
                     cache="bypass") == 1
        assert value(m, "llm_gateway_requests_total", route="_unknown", deployment="-", status="404",
                     cache="bypass") == 1
        assert total(m, "llm_gateway_requests_total", status="400") == 1
        assert total(m, "llm_gateway_requests_total", status="401") == 1
        assert total(m, "llm_gateway_requests_total") == 6
        assert value(m, "llm_gateway_retries_total", route="chat-default", deployment="a") == 1
        assert value(m, "llm_gateway_failovers_total", route="chat-default") == 1
        usage1, usage2 = r1.json()["usage"], r2.json()["usage"]
        assert value(m, "llm_gateway_prompt_tokens_total", route="chat-default", deployment="b") == usage1["prompt_tokens"]
        assert value(m, "llm_gateway_completion_tokens_total", route="chat-default", deployment="a") == \
            usage2["completion_tokens"]
        assert value(m, "llm_gateway_request_duration_seconds_count", route="chat-default") == 2
        assert value(m, "llm_gateway_overhead_seconds_count", route="chat-default") == 2
        assert value(m, "llm_gateway_time_to_first_token_seconds_count", route="claude") == 1
        assert value(m, "llm_gateway_breaker_state", deployment="a") == 0  # 1 failure, below the threshold of 3
        assert value(m, "llm_gateway_in_flight_requests") == 0
        assert value(m, "llm_gateway_deployment_healthy", deployment="a") == 1
        # "dead" (127.0.0.1:9) is an OpenAI-kind provider without a health_path: never health-checked, only
        # its breaker takes it out of a route. A vLLM server is checked (/health, every 0.2 s here).
        assert value(m, "llm_gateway_deployment_healthy", deployment="dead") == 1
        sims.b.healthy = False
        eventually(g, lambda m: value(m, "llm_gateway_deployment_healthy", deployment="b") == 0, "b found down")
        sims.b.healthy = True
        eventually(g, lambda m: value(m, "llm_gateway_deployment_healthy", deployment="b") == 1, "b found up")
        assert httpx.get(f"{g.root_url}/metrics").status_code == 401, "with keys on, /metrics needs the admin key"
        text = scrape(g)
        for secret in (MASTER, virtual, OPENAI_KEY, ANTHROPIC_KEY, ADMIN_KEY, "no-such-model"):
            assert secret not in text
        wait_until(lambda: len(request_lines(g)) >= 6, timeout=30, what="the six request log lines")
        lines = [json.loads(line) for line in g.logs().splitlines() if line.startswith('{"ts"')]
        assert len([x for x in lines if x["event"] == "request"]) == 6
        first = next(x for x in lines if x["status"] == 200 and x["deployment"] == "b")
        assert first["attempts"] == 2 and first["key_alias"] == "observer" and first["route"] == "chat-default"
        assert first["prompt_tokens"] == usage1["prompt_tokens"] and first["ttft_ms"] is not None
        assert "prompt" not in first, "prompts are not logged by default"
        logs = g.logs()
        for secret in (MASTER, virtual, OPENAI_KEY, ANTHROPIC_KEY, ADMIN_KEY, "sk-gw-wrong"):
            assert secret not in logs, "an API key appeared in the logs"
        # A request its upstreams hold for 3 s is in flight until it is answered: past the route's read_s
        # (1 s) each is silent once, neither is asked again in the same request, and the answer is a 504.
        for sim in (sims.a, sims.b):
            sim.add_fault(Fault.latency(3.0))
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, g, MASTER, model="chat-default")
            eventually(g, lambda m: value(m, "llm_gateway_in_flight_requests") == 1, "one request in flight")
            assert not slow.done()
            assert slow.result(timeout=30).status_code == 504
        eventually(g, lambda m: value(m, "llm_gateway_in_flight_requests") == 0, "none in flight once answered")
    sims.reset()


def test_prompt_logging_is_opt_in_and_redacted(sims: Sims) -> None:
    sims.reset()
    with gateway(sims, config={"logging": {"log_prompts": True}}) as g:
        secret_msg = [{"role": "user", "content": "my key is sk-live-abcdefgh12345678, mail bob@example.com"}]
        assert post(g, MASTER, model="chat-default", messages=secret_msg).status_code == 200
        wait_until(lambda: len(request_lines(g)) >= 1, timeout=30, what="the request's log line")
        line = next(json.loads(x) for x in g.logs().splitlines() if x.startswith('{"ts"'))
        assert "my key is [REDACTED], mail [REDACTED]" in line["prompt"]
        assert "Reply to: my key is [REDACTED]" in line["completion"]
        assert "sk-live-abcdefgh12345678" not in g.logs() and "bob@example.com" not in g.logs()
        leaks = ["4111 1111 1111 1111", "4111-1111-1111-1111", "AKIAIOSFODNN7EXAMPLE", "ghp_" + "A1b2" * 9,
                 "AIza" + "Xy_-" * 9, "xoxb-1234567890-abcdefghij", MASTER, ADMIN_KEY]
        more = [{"role": "user", "content": "secrets: " + " | ".join(leaks)}]
        assert post(g, MASTER, model="chat-default", messages=more).status_code == 200
        wait_until(lambda: len(request_lines(g)) >= 2, timeout=30, what="the second request's log line")
        for leak in leaks:
            assert leak not in g.logs(), leak
    sims.reset()


def test_a_stream_its_client_leaves_is_logged_499_with_what_it_was_sent(sims: Sims) -> None:
    sims.reset()
    sims.a.add_fault(Fault.chunk_delay(0.2))  # about 2 s for the whole reply: time to leave in the middle
    with gateway(sims) as g:
        body = {"model": "chat-default", "messages": MSGS, "stream": True}
        with httpx.stream("POST", f"{g.base_url}/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {MASTER}", "x-request-id": "left-midway"}) as r:
            lines = r.iter_lines()
            assert [next(lines) for _ in range(5)]  # a few events, then the client goes
        line = wait_until(lambda: [x for x in request_lines(g) if x["request_id"] == "left-midway"], timeout=10,
                          what="the stream's log line")[0]
        assert (line["status"], line["error_code"]) == (499, "client_disconnected"), line
        assert line["completion_tokens"] > 0 and line["prompt_tokens"] > 0, line  # what it was sent is counted
        eventually(g, lambda m: total(m, "llm_gateway_requests_total", status="499") == 1, "the 499 counted")
    sims.reset()


def test_metrics_are_merged_across_two_workers(sims: Sims) -> None:
    sims.reset()
    cfg = {"server": {"watch_config": False}}
    with gateway(sims, config=cfg, extra_args=["--workers", "2"]) as g:
        # /ready answers once one worker is up; on a busy machine the second may start a little later.
        wait_until(lambda: len(set(re.findall(r"Started server process \[(\d+)\]", g.logs(None)))) >= 2,
                   timeout=30, what="both workers")
        for _ in range(20):  # a new connection each time, so both workers serve some
            assert post(g, MASTER, model="chat-default").status_code == 200
        for _ in range(6):
            m = samples(g)
            assert total(m, "llm_gateway_requests_total") == 20, "every scrape sees both workers' counts"
        logs = [json.loads(x) for x in g.logs(None).splitlines() if x.startswith('{"ts"')]
        assert len(logs) == 20
        served = sims.a.count("/v1/chat/completions") + sims.b.count("/v1/chat/completions")
        assert served == 20
        # Both workers write to one log, so one line may hold the start of both: read pids, not lines.
        pids = set(re.findall(r"Started server process \[(\d+)\]", g.logs(None)))
        assert len(pids) == 2, "two workers served"
    sims.reset()


def _workers(g: GatewayProcess) -> list[int]:
    """The serving workers: children of the supervisor that are Python (not multiprocessing's helper)."""
    assert g.proc is not None
    helpers = ("multiprocessing.resource_tracker", "backends.llamacpp.host")  # and engine processes
    return [c for c in children(g.proc.pid) if not any(h in cmdline(c) for h in helpers)]


def _established_on(port: int) -> set[str]:
    """Socket inodes of ESTABLISHED TCP connections whose local port is `port` (the server's side)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if int(cols[1].rpartition(":")[2], 16) == port and cols[3] == "01":
                inodes.add(cols[9])
    return inodes


def _sockets_of(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    found: set[str] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[len("socket:["):-1])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only")
def test_workers_share_connections_and_a_dead_worker_is_replaced(sims: Sims) -> None:
    """Each worker listens on its own SO_REUSEPORT socket, so keep-alive connections spread over both;
    a worker that dies is replaced."""
    sims.reset()
    with gateway(sims, config={"server": {"watch_config": False}}, extra_args=["--workers", "2"]) as g:
        deadline = time.monotonic() + 60  # both listening (a worker logs this after its socket listens)
        while g.logs().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = _workers(g)
        assert len(workers) == 2, workers
        clients = [httpx.Client(timeout=30) for _ in range(24)]  # 24 keep-alive connections, 4 requests each
        for _ in range(4):
            for c in clients:
                r = c.post(f"{g.base_url}/chat/completions", headers={"Authorization": f"Bearer {MASTER}"},
                           json={"model": "chat-default", "messages": MSGS})
                assert r.status_code == 200
        # Which worker holds each connection shows in /proc: the server side of every open connection is a
        # socket inode in exactly one worker's fd table. The kernel hashes 24 connections over 2 listening
        # sockets; one worker with 2 or fewer has odds of about 4 in 100,000.
        open_conns = _established_on(g.port)
        held = {w: len(_sockets_of(w) & open_conns) for w in workers}
        for c in clients:
            c.close()
        assert sum(held.values()) == 24, (held, len(open_conns))
        assert all(n >= 3 for n in held.values()), held
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (len(now := _workers(g)) == 2 and workers[0] not in now):
            time.sleep(0.2)
        assert len(_workers(g)) == 2 and workers[0] not in _workers(g), "the supervisor started a new worker"
        assert "exited with code" in g.logs()
        for _ in range(10):  # whichever worker a new connection reaches, it answers
            assert post(g, MASTER, model="chat-default").status_code == 200
    sims.reset()


def test_spans_for_the_request_and_each_attempt(sims: Sims, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("opentelemetry.sdk")
    import uvicorn
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway import tracing
    from gateway.app import create_app
    from routing.config import GatewayConfig

    sims.reset()
    monkeypatch.delenv("REDIS_URL", raising=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    cfg = GatewayConfig.model_validate({k: v for k, v in base_config(sims).items() if k != "providers"} | {
        "providers": {k: v for k, v in base_config(sims)["providers"].items() if k.startswith("vllm")},
        "deployments": [d for d in base_config(sims)["deployments"] if d["provider"].startswith("vllm")],
        "routes": [r for r in base_config(sims)["routes"] if r["name"] == "chat-default"]})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)
        sims.a.add_fault(Fault.status(503))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "chat-default",
                                                                             "messages": MSGS})
        assert r.status_code == 200
        spans = exporter.get_finished_spans()
        # Named as OpenTelemetry's GenAI conventions have it: "{operation} {model}", the route's model for the
        # request, the deployment's for each attempt (tests/gateway/test_trace_context.py: their attributes).
        request = [s for s in spans if s.name == "chat chat-default"]
        attempts = [s for s in spans if s.name == "chat vllm-model"]
        assert len(request) == 1 and len(attempts) == 2
        assert all(a.parent.span_id == request[0].context.span_id for a in attempts)
        assert [a.attributes["gateway.deployment"] for a in attempts] == ["a", "b"]
        assert attempts[0].status.status_code.name == "ERROR" and attempts[1].status.status_code.name == "UNSET"
        assert request[0].attributes["gateway.deployment"] == "b"
    finally:
        tracing.install(None)
        server.should_exit = True
        thread.join(10)
        sims.reset()
