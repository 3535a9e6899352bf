"""The graceful drain (gateway/drain.py, `server.drain_timeout_s`): on SIGTERM the gateway takes no new
work, lets the streams in flight (HTTP and gRPC) finish, and exits; a stream longer than the drain is cut
at its end, and the process still exits."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc_api.stubs import load
from tests.routing_env import Sims, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess, free_port
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process
MASTER = "sk-master-drain-0123456789"
MESSAGES = [{"role": "user", "content": "a long enough answer to drain"}]
AUTH = {"Authorization": f"Bearer {MASTER}"}
stubs = load()


def config(s: Sims, grpc_port: int, drain_s: float) -> dict[str, Any]:
    return {"server": {"drain_timeout_s": drain_s, "grpc": {"enabled": True, "port": grpc_port}},
            "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
            "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
            "routes": [{"name": "chat", "deployments": ["a"]}]}


class Streams:
    """An HTTP stream and a gRPC stream read in threads: their text, whether they ended, when."""

    def __init__(self, g: GatewayProcess, channel: grpc.Channel) -> None:
        self.g, self.channel = g, channel
        self.text = {"http": "", "grpc": ""}
        self.done: dict[str, bool] = {}
        self.errors: dict[str, str] = {}
        self.threads = [threading.Thread(target=self._http), threading.Thread(target=self._grpc)]

    def _http(self) -> None:
        body = {"model": "chat", "messages": MESSAGES, "stream": True}
        try:
            with httpx.stream("POST", f"{self.g.base_url}/chat/completions", json=body, headers=AUTH, timeout=30) as r:
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done["http"] = True
                    elif line.startswith("data: "):
                        for c in json.loads(line[6:]).get("choices") or ():
                            self.text["http"] += (c.get("delta") or {}).get("content") or ""
        except Exception as exc:  # cut: the drain ended before the stream did
            self.errors["http"] = type(exc).__name__

    def _grpc(self) -> None:
        from google.protobuf import json_format

        ask = json_format.ParseDict({"model": "chat", "messages": MESSAGES}, stubs.pb.ChatCompletionRequest())
        stub = importlib_grpc("chat").ChatServiceStub(self.channel)
        try:
            for chunk in stub.StreamChatCompletion(ask, metadata=(("authorization", AUTH["Authorization"]),),
                                                   timeout=30):
                self.text["grpc"] += "".join(c.delta.content for c in chunk.choices)
            self.done["grpc"] = True
        except grpc.RpcError as exc:
            self.errors["grpc"] = exc.code().name

    def start(self) -> None:
        for t in self.threads:
            t.start()
        wait_until(lambda: all(self.text.values()), timeout=10, what="both streams under way")

    def join(self) -> None:
        for t in self.threads:
            t.join(30)


def importlib_grpc(proto: str) -> Any:
    import importlib

    return importlib.import_module(f"llm_gateway.v1.{proto}_pb2_grpc")


def refused(g: GatewayProcess) -> bool:
    try:
        httpx.get(f"{g.root_url}/health", timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_streams_in_flight_finish_and_new_work_is_refused(sims: Sims) -> None:
    sims.reset()
    sims.a.add_fault(Fault.chunk_delay(0.15), times=2)  # both streams take about 2 s
    port = free_port()
    with (GatewayProcess(config(sims, port, drain_s=20), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g,
          grpc.insecure_channel(f"127.0.0.1:{port}") as channel):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        streams = Streams(g, channel)
        streams.start()
        assert g.proc is not None
        signalled = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(g), timeout=5, what="new HTTP connections refused")
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # gRPC clients move on
        with pytest.raises(grpc.RpcError) as late:  # a new call on the open channel goes elsewhere
            importlib_grpc("chat").ChatServiceStub(channel).CreateChatCompletion(
                stubs.pb.ChatCompletionRequest(model="chat"), metadata=(("authorization", AUTH["Authorization"]),))
        assert late.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting_down" in str(late.value.trailing_metadata())
        assert not all(streams.done.get(k) for k in ("http", "grpc")), "the drain must start mid-stream"
        streams.join()
        assert streams.errors == {} and streams.done == {"http": True, "grpc": True}
        assert streams.text == {"http": canonical_reply(MESSAGES), "grpc": canonical_reply(MESSAGES)}
        assert g.proc.wait(10) in (0, -signal.SIGTERM) and time.monotonic() - signalled < 15
    sims.reset()


def test_a_stream_longer_than_the_drain_is_cut_at_its_end(sims: Sims) -> None:
    sims.reset()
    sims.a.add_fault(Fault.chunk_delay(0.5), times=2)  # several seconds each
    port = free_port()
    with (GatewayProcess(config(sims, port, drain_s=1.0), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g,
          grpc.insecure_channel(f"127.0.0.1:{port}") as channel):
        streams = Streams(g, channel)
        streams.start()
        assert g.proc is not None
        signalled = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        assert g.proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
        exited = time.monotonic() - signalled
        streams.join()
        assert 0.9 < exited < 6, exited  # the drain's second, then the shutdown
        assert not streams.done and set(streams.errors) == {"http", "grpc"}, (streams.done, streams.errors)
    sims.reset()
