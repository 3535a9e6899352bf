"""`serve --workers 2` with the gRPC API on, on simulated upstreams: every worker serves gRPC on the one port
(SO_REUSEPORT), calls and health are answered whichever worker a connection reaches, their metrics are
merged, a replaced worker serves gRPC again; and a gRPC port that another process holds is refused at
start-up instead of being silently shared with it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc_api.codegen import load
from tests.gateway.test_observability import MASTER, _established_on, _sockets_of, _workers, gateway, samples, total
from tests.paths import ROOT
from tests.routing_env import Sims, sims  # noqa: F401  (fixture)
from tests.server import free_port
from tests.sim import canonical_reply
from tests.waiting import wait_until

pytestmark = [pytest.mark.process,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT workers are Linux-only")]
pb2, pb2_grpc = load()
AUTH = (("authorization", f"Bearer {MASTER}"),)
MESSAGES = [{"role": "user", "content": "which worker answers?"}]
CHANNELS = 16  # connections hashed over 2 workers: all on one worker has odds of 2 in 65,536


def config(port: int) -> dict[str, Any]:
    return {"server": {"watch_config": False, "grpc": {"enabled": True, "port": port}}}


def channels(port: int) -> list[grpc.Channel]:
    """Each its own TCP connection (grpc shares one between channels to the same target by default)."""
    out = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
           for _ in range(CHANNELS)]
    for ch in out:
        grpc.channel_ready_future(ch).result(timeout=20)
    return out


def call_each(chans: list[grpc.Channel]) -> None:
    from google.protobuf import json_format

    req = json_format.ParseDict({"model": "chat-default", "messages": MESSAGES, "max_tokens": 50},
                                pb2.ChatCompletionRequest())
    for ch in chans:
        reply = pb2_grpc.ChatServiceStub(ch).CreateChatCompletion(req, metadata=AUTH, timeout=30)
        assert reply.choices[0].message.content == canonical_reply(MESSAGES)
        health = health_pb2_grpc.HealthStub(ch)

        def status(service: str, health: Any = health) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

        assert status("") == health_pb2.HealthCheckResponse.SERVING
        # Each worker refreshes its routes' health on its own (every 2 s): a new one may not have yet.
        wait_until(lambda: status("chat-default") == health_pb2.HealthCheckResponse.SERVING, timeout=15,
                   what="the route SERVING on this connection's worker")


def grpc_listening(logs: str) -> int:
    return len(re.findall(r"gRPC API listening on", logs))


def held_by(workers: list[int], port: int) -> dict[int, int]:
    """How many of the established connections on `port` each worker holds."""
    conns = _established_on(port)
    return {w: len(_sockets_of(w) & conns) for w in workers}


def test_every_worker_serves_grpc_on_the_shared_port(sims: Sims) -> None:
    sims.reset()
    port = free_port()
    with gateway(sims, config=config(port), extra_args=["--workers", "2"]) as g:
        wait_until(lambda: grpc_listening(g.logs(None)) >= 2, timeout=60, what="both workers' gRPC servers")
        workers = _workers(g)
        assert len(workers) == 2, workers
        chans = channels(port)
        try:
            call_each(chans)
            held = held_by(workers, port)
            assert sum(held.values()) == CHANNELS and all(n >= 1 for n in held.values()), held
        finally:
            for ch in chans:
                ch.close()
        served = sims.a.count("/v1/chat/completions") + sims.b.count("/v1/chat/completions")
        assert served == CHANNELS
        for _ in range(4):  # whichever worker answers the scrape counts both workers' gRPC calls
            assert total(samples(g), "llm_gateway_requests_total", route="chat-default") == CHANNELS

        _kill_and_wait_for_replacement(g, workers[0])
        wait_until(lambda: grpc_listening(g.logs(None)) >= 3, timeout=60, what="the new worker's gRPC server")
        now = _workers(g)
        chans = channels(port)
        try:
            call_each(chans)
            held = held_by(now, port)
            assert all(n >= 1 for n in held.values()), f"the replacement worker serves gRPC too: {held}"
        finally:
            for ch in chans:
                ch.close()
    sims.reset()


def _kill_and_wait_for_replacement(g: Any, victim: int) -> None:
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(now := _workers(g)) == 2 and victim not in now, timeout=60,
               what="the supervisor's replacement worker")


def serve(port: int, grpc_port: int, workers: int, tmp: Any) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "gateway.yaml"
    cfg.write_text(f"server: {{grpc: {{enabled: true, port: {grpc_port}}}}}\nmodels: []\n"
                   "providers: {x: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}\n"
                   "deployments: [{name: x, provider: x, model: x}]\nroutes: [{name: r, deployments: [x]}]\n")
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # it served: stop its workers too, not only the supervisor
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_grpc_port_held_by_another_process_is_refused(workers: int, tmp_path: Any) -> None:
    """Held with SO_REUSEPORT, as another gateway's gRPC server holds it: grpc would join that group and
    share its connections with the other process; the CLI refuses instead."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        grpc_port = holder.getsockname()[1]
        r = serve(free_port(), grpc_port, workers, tmp_path)
    finally:
        holder.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"server.grpc: cannot listen on 127.0.0.1:{grpc_port}: Address already in use" in r.stderr
    assert "listening on http" not in r.stdout


def test_grpc_with_workers_on_port_0_is_refused(tmp_path: Any) -> None:
    r = serve(free_port(), 0, 2, tmp_path)
    assert r.returncode == 2 and "needs a fixed port (not 0)" in r.stderr, r.stdout + r.stderr
