"""The gRPC API (gateway/grpc_api) with a real grpcio client against a real gateway process on simulated
upstreams: unary and streaming chat, the model list, errors as gRPC status codes with the OpenAI error in
the trailing metadata, the request id in the initial metadata, and grpc.health.v1. The error mapping and
the SSE parsing are also checked on their own (unit)."""

from __future__ import annotations

import base64
import importlib
import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from backends.contract.errors import GatewayError, InvalidRequest, ModelNotFound
from gateway.grpc_api import codegen, errors
from gateway.grpc_api.codegen import load
from gateway.grpc_api.stubs import load as load_stubs
from tests.paths import ROOT
from tests.routing_env import Sims, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess, free_port
from tests.sim import Fault, canonical_reply
from tests.sim.openai_sim import sim_vector
from tests.waiting import wait_until

MASTER = "sk-master-grpc-0123456789"
pb2, pb2_grpc = load()
stubs = load_stubs()


def pb2_grpc_of(proto: str) -> Any:
    return importlib.import_module(f"llm_gateway.v1.{proto}_pb2_grpc")


def config(s: Sims, port: int) -> dict[str, Any]:
    return {
        "server": {"grpc": {"enabled": True, "port": port}},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model", "max_concurrency": 1}],
        # One call at a time: a call that kept its place after it ended would make the next one wait, then 429.
        "routes": [{"name": "chat", "deployments": ["a"], "max_concurrent_requests": 1, "timeouts": {"queue_s": 1.0}}],
        "health_checks": {"interval_s": 0.3, "timeout_s": 0.5},
    }


@pytest.fixture
def gateway(sims: Sims) -> Iterator[tuple[GatewayProcess, grpc.Channel]]:
    sims.reset()
    port = free_port()
    with (GatewayProcess(config(sims, port), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g,
          grpc.insecure_channel(f"127.0.0.1:{port}") as channel):
        grpc.channel_ready_future(channel).result(timeout=20)
        yield g, channel


AUTH = (("authorization", f"Bearer {MASTER}"),)
MESSAGES = [{"role": "user", "content": "hello over grpc"}]


def request(**fields: Any) -> Any:
    from google.protobuf import json_format

    return json_format.ParseDict({"model": "chat", "messages": MESSAGES, **fields}, pb2.ChatCompletionRequest())


def openai_error(exc: grpc.RpcError) -> dict[str, Any]:
    trailers = dict(exc.trailing_metadata() or ())
    return json.loads(trailers["x-openai-error"])["error"]


@pytest.mark.process
def test_unary_streaming_models_and_health(gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    _, channel = gateway
    stub = pb2_grpc.ChatServiceStub(channel)
    reply, call = stub.CreateChatCompletion.with_call(request(max_tokens=200, temperature=0.0), metadata=AUTH)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == canonical_reply(MESSAGES)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.total_tokens > 0
    assert len(dict(call.initial_metadata())["x-request-id"]) >= 8

    mine = (*AUTH, ("x-request-id", "grpc-req-42"))
    stream = stub.StreamChatCompletion(request(max_tokens=200), metadata=mine)
    chunks = list(stream)
    assert dict(stream.initial_metadata())["x-request-id"] == "grpc-req-42"
    assert len(chunks) > 2 and all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(ch.delta.content for c in chunks for ch in c.choices)
    assert text == canonical_reply(MESSAGES)
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.HasField("finish_reason")] == ["stop"]

    models = stub.ListModels(pb2.ListModelsRequest(), metadata=AUTH)
    assert [m.id for m in models.data] == ["chat"]

    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "chat"):
        got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert got.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.process
def test_errors_are_grpc_status_codes(gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    _, channel = gateway
    stub = pb2_grpc.ChatServiceStub(channel)
    with pytest.raises(grpc.RpcError) as wrong:
        stub.CreateChatCompletion(request(), metadata=(("authorization", "Bearer sk-wrong-key-000000"),))
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert openai_error(wrong.value)["code"] == "invalid_api_key"
    assert "sk-wrong" not in wrong.value.details()

    with pytest.raises(grpc.RpcError) as bad:
        stub.CreateChatCompletion(request(temperature=5.0), metadata=AUTH)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = openai_error(bad.value)
    assert err["type"] == "invalid_request_error" and err["param"] == "temperature"
    assert bad.value.details() == err["message"] and "Traceback" not in bad.value.details()
    status = rpc_status.from_call(bad.value)  # google.rpc.Status in grpc-status-details-bin
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.details[0].Unpack(info) and info.metadata["param"] == "temperature"
    assert dict(bad.value.trailing_metadata())["x-request-id"]  # an error names its request too

    for rpc in (stub.CreateChatCompletion, lambda r, metadata: list(stub.StreamChatCompletion(r, metadata=metadata))):
        with pytest.raises(grpc.RpcError) as unknown:
            rpc(request(model="no-such-model"), metadata=AUTH)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert openai_error(unknown.value)["code"] == "model_not_found"


@pytest.mark.process
def test_completions_and_embeddings_and_the_gateway_headers_as_metadata(
        gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    from google.protobuf import json_format

    _, channel = gateway
    completions = pb2_grpc_of("completions").CompletionServiceStub(channel)
    ask = json_format.ParseDict({"model": "chat", "prompt": "Say hi", "max_tokens": 20, "seed": 7,
                                 "extra_body": {"top_k": 3}}, stubs.pb.CompletionRequest())
    reply, call = completions.CreateCompletion.with_call(ask, metadata=AUTH)
    assert reply.object == "text_completion" and reply.choices[0].text and reply.usage.total_tokens > 0
    meta = dict(call.initial_metadata())
    assert meta["x-gateway-deployment"] == "a" and meta["x-gateway-attempts"] == "1" and "x-request-id" in meta
    pieces = list(completions.StreamCompletion(ask, metadata=AUTH))
    assert len(pieces) > 1 and all(p.object == "text_completion" for p in pieces)
    assert "".join(c.text for p in pieces for c in p.choices) == reply.choices[0].text
    assert not any(p.HasField("usage") for p in pieces)  # the usage the gateway asked for is not passed on
    usage_asked = json_format.ParseDict({"model": "chat", "prompt": "Say hi", "stream_options": {"include_usage": True}},
                                        stubs.pb.CompletionRequest())
    assert list(completions.StreamCompletion(usage_asked, metadata=AUTH))[-1].usage.total_tokens > 0

    embeddings = pb2_grpc_of("embeddings").EmbeddingServiceStub(channel)
    tokens = json_format.ParseDict({"model": "chat", "input": [1, 2, 3]}, stubs.pb.EmbeddingRequest())
    got = embeddings.CreateEmbedding(tokens, metadata=AUTH)  # token ids reach the upstream as integers
    assert got.object == "list" and len(got.data) == 1 and got.usage.prompt_tokens == 3
    assert list(got.data[0].embedding) == pytest.approx(sim_vector([1, 2, 3], 64), abs=1e-6)
    texts = json_format.ParseDict({"model": "chat", "input": ["a b", "c"], "encoding_format": "base64",
                                   "dimensions": 8}, stubs.pb.EmbeddingRequest())
    got = embeddings.CreateEmbedding(texts, metadata=AUTH)
    decoded = struct.unpack("<8f", base64.b64decode(got.data[1].embedding_base64))
    assert [d.index for d in got.data] == [0, 1] and not got.data[1].embedding
    assert list(decoded) == pytest.approx(sim_vector("c", 64, 8), abs=1e-6)


@pytest.mark.process
def test_a_deadline_is_deadline_exceeded_and_frees_the_route(sims: Sims,
                                                               gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    g, channel = gateway
    stub = pb2_grpc.ChatServiceStub(channel)
    sims.a.add_fault(Fault.latency(5.0))
    for rpc, rid in ((stub.CreateChatCompletion, "grpc-deadline-1"),
                     (lambda r, **kw: list(stub.StreamChatCompletion(r, **kw)), "grpc-deadline-2")):
        with pytest.raises(grpc.RpcError) as late:
            rpc(request(), metadata=(*AUTH, ("x-request-id", rid)), timeout=0.6)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        line = wait_until(lambda: log_lines(g, rid), timeout=4, what="the late call's log line")[0]
        assert line["status"] == 504 and line["error_code"] == "deadline_exceeded"
        sims.a.clear_faults()
        # The route's one place came back with the deadline (the upstream still sleeps on the late call).
        assert stub.CreateChatCompletion(request(), metadata=AUTH, timeout=3).choices[0].message.content
        sims.a.add_fault(Fault.latency(5.0))
    sims.a.clear_faults()
    # The deadline bounds the router too: a retry that could only start after it is not waited for.
    sims.a.add_fault(Fault.status(503, retry_after=3))
    before, started = sims.a.count("/v1/chat/completions"), time.monotonic()
    with pytest.raises(grpc.RpcError) as failed:
        stub.CreateChatCompletion(request(), metadata=AUTH, timeout=1.5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 1.2
    assert sims.a.count("/v1/chat/completions") == before + 1
    assert "Traceback" not in g.logs(None)


def log_lines(g: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in g.logs(None).splitlines()
            if x.startswith('{"ts"') and f'"request_id":"{request_id}"' in x.replace(" ", "")]


@pytest.mark.process
def test_logged_limited_and_a_cancelled_call_is_a_499_that_frees_its_place(
        sims: Sims, gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    g, channel = gateway
    stub = pb2_grpc.ChatServiceStub(channel)
    assert list(stub.StreamChatCompletion(request(), metadata=(*AUTH, ("x-request-id", "grpc-logged-1"))))
    line = wait_until(lambda: log_lines(g, "grpc-logged-1"), what="the stream's log line")[0]
    assert line["endpoint"] == "chat" and line["status"] == 200 and line["deployment"] == "a"
    assert line["transport"] == "grpc"
    for _ in range(2):  # each stream gave its place back as it ended
        assert list(stub.StreamChatCompletion(request(), metadata=AUTH, timeout=5))

    sims.a.add_fault(Fault.latency(5.0))
    before = sims.a.count("/v1/chat/completions")
    future = stub.CreateChatCompletion.future(request(), metadata=(*AUTH, ("x-request-id", "grpc-cancel-1")))
    wait_until(lambda: sims.a.count("/v1/chat/completions") > before, what="the upstream called")
    with pytest.raises(grpc.RpcError) as limited:  # the route's one place is taken: 429 after queue_s
        stub.CreateChatCompletion(request(), metadata=AUTH, timeout=5)
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert openai_error(limited.value)["code"] == "concurrency_limit_exceeded"
    retry = error_details_pb2.RetryInfo()
    status = rpc_status.from_call(limited.value)
    assert status is not None and any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert retry.retry_delay.seconds == 1  # the Retry-After that HTTP sends
    waiting = stub.CreateChatCompletion.future(request(), metadata=(*AUTH, ("x-request-id", "grpc-cancel-0")))
    time.sleep(0.3)  # let it reach the route's queue (queue_s 1): it is cancelled while still in admission
    waiting.cancel()
    line = wait_until(lambda: log_lines(g, "grpc-cancel-0"), timeout=4, what="the queued call's log line")[0]
    assert line["status"] == 499 and line["error_code"] == "client_disconnected"  # not a 500
    future.cancel()
    line = wait_until(lambda: log_lines(g, "grpc-cancel-1"), timeout=4, what="the cancelled call's log line")[0]
    assert line["status"] == 499 and line["error_code"] == "client_disconnected"
    # Its place was given back at once (the upstream is still sleeping on it): the next call is answered.
    assert stub.CreateChatCompletion(request(), metadata=AUTH, timeout=3).choices[0].message.content
    assert "Traceback" not in g.logs(None)  # a client that left is no error of the gateway's


@pytest.mark.process
def test_a_broken_stream_ends_in_a_status_and_reflection_lists_the_services(
        sims: Sims, gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    _, channel = gateway
    stub = pb2_grpc.ChatServiceStub(channel)
    sims.a.add_fault(Fault.cut_stream(after_chunks=3), times=10)  # one deployment: nothing to continue on
    got = []
    with pytest.raises(grpc.RpcError) as broken:
        for chunk in stub.StreamChatCompletion(request(), metadata=AUTH, timeout=10):
            got.append(chunk)
    assert got and broken.value.code() == grpc.StatusCode.UNAVAILABLE  # a 502: the upstream's stream broke off
    assert openai_error(broken.value)["code"] == "stream_interrupted"
    sims.a.clear_faults()

    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([ask]), timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert {"llm_gateway.v1.ChatService", "grpc.health.v1.Health"} <= names


@pytest.mark.process
def test_a_route_without_a_usable_deployment_is_not_serving(sims: Sims,
                                                            gateway: tuple[GatewayProcess, grpc.Channel]) -> None:
    _, channel = gateway
    health = health_pb2_grpc.HealthStub(channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    sims.a.stop()
    try:
        wait_until(lambda: status("chat") == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=15,
                   what="the route's health NOT_SERVING")
        assert status("") == health_pb2.HealthCheckResponse.SERVING  # the gateway itself still serves
    finally:
        sims.a.start()
    wait_until(lambda: status("chat") == health_pb2.HealthCheckResponse.SERVING, timeout=15,
               what="the route's health SERVING again")
    with pytest.raises(grpc.RpcError) as unknown:
        status("no-such-model")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.unit
def test_stubs_are_generated_when_missing_or_made_from_other_protos(tmp_path: Path) -> None:
    protos, out = tmp_path / "protos", tmp_path / "_generated"
    shutil.copytree(codegen.PROTOS, protos)
    assert codegen.stale(protos, out)
    codegen.generate(protos, out)
    assert not codegen.stale(protos, out)
    assert (out / "llm_gateway/v1/chat_pb2_grpc.py").read_text().count("def StreamChatCompletion") == 2
    proto = protos / "llm_gateway/v1/chat.proto"
    later = (out / "llm_gateway/v1/chat_pb2.py").stat().st_mtime + 10
    os.utime(proto, (later, later))
    assert not codegen.stale(protos, out), "their content decides, not mtimes (a wheel's install sets those)"
    proto.write_text(proto.read_text() + "\n// edited\n")
    assert codegen.stale(protos, out)
    assert not any(p.name.startswith("_generated-") for p in tmp_path.iterdir())  # no temporary left behind


@pytest.mark.process  # runs git
def test_generated_stubs_are_not_in_git() -> None:
    tracked = subprocess_out(["git", "ls-files", "gateway/grpc_api"])
    assert "chat.proto" in tracked and "_pb2" not in tracked


def subprocess_out(cmd: list[str]) -> str:
    import subprocess

    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.mark.process
def test_the_http_gateway_does_not_import_grpc_when_it_is_off() -> None:
    code = ("import sys, gateway.app, gateway.cli; from routing.config import GatewayConfig; "
            "assert GatewayConfig().server.grpc.enabled is False; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_tools', 'grpc_health')))")
    assert subprocess_out([sys.executable, "-c", code]).strip() == "[]"


@pytest.mark.unit
@pytest.mark.parametrize("status,name", [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"),
                                         (403, "PERMISSION_DENIED"), (404, "NOT_FOUND"),
                                         (429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"),
                                         (504, "DEADLINE_EXCEEDED"), (500, "INTERNAL"), (502, "UNAVAILABLE"),
                                         (507, "INTERNAL"), (418, "FAILED_PRECONDITION")])
def test_status_mapping(status: int, name: str) -> None:
    assert errors.status_name(status) == name
    assert hasattr(grpc.StatusCode, name)


@pytest.mark.unit
def test_describe_keeps_the_openai_body_and_hides_bugs() -> None:
    f = errors.describe(ModelNotFound("x"))
    assert f.code == "NOT_FOUND" and f.body["error"]["code"] == "model_not_found" and "x" in f.message
    f = errors.describe(InvalidRequest("nope", param="temperature"))
    assert f.code == "INVALID_ARGUMENT" and json.loads(f.openai_json)["error"]["param"] == "temperature"
    f = errors.describe(ValueError("secret internals"))
    assert f.code == "INTERNAL" and "secret" not in f.message and "secret" not in f.openai_json.decode()
    limited = GatewayError("slow down", status_code=429, code="rate_limit_exceeded", headers={"Retry-After": "3"})
    assert errors.describe(limited).retry_after_s == 3.0


@pytest.mark.unit
def test_status_details_follow_aip_193() -> None:
    from google.rpc import error_details_pb2, status_pb2

    limited = GatewayError("slow down", status_code=429, code="rate_limit_exceeded", error_type="rate_limit_error")
    limited.retry_after = 1.5
    status = status_pb2.Status.FromString(errors.status_details(errors.describe(limited), 8, "req-1"))
    assert status.code == 8 and status.message == "slow down"
    info, retry, request_info = (error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo(),
                                 error_details_pb2.RequestInfo())
    assert [d.Unpack(m) for d, m in zip(status.details, (info, retry, request_info))] == [True] * 3
    assert info.reason == "RATE_LIMIT_EXCEEDED" and info.domain == errors.DOMAIN
    assert dict(info.metadata) == {"type": "rate_limit_error", "code": "rate_limit_exceeded", "http_status": "429"}
    assert retry.retry_delay.ToMilliseconds() == 1500 and request_info.request_id == "req-1"

    bad = errors.describe(InvalidRequest("temperature too high", param="temperature"))
    status = status_pb2.Status.FromString(errors.status_details(bad, 3, "req-2"))
    field = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(field) and field.field_violations[0].field == "temperature"
    assert errors.reason({"code": None, "type": "invalid_request_error"}) == "INVALID_REQUEST_ERROR"
    assert errors.reason({"code": "weird-code.v2"}) == "WEIRD_CODE_V2"


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, by openssl (Debian's; the tests need no other library)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess_out(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)])
    return cert, key


@pytest.mark.process
def test_tls_with_client_certificates(sims: Sims, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    cfg = config(sims, port)
    cfg["server"]["grpc"].update(tls_cert_file=str(cert), tls_key_file=str(key), tls_client_ca_file=str(cert))
    ask = pb2.ListModelsRequest()
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        wait_until(lambda: "gRPC API listening" in g.logs(None), what="the gRPC server up")
        assert "(TLS)" in g.logs(None)
        mutual = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes(), private_key=key.read_bytes(),
                                              certificate_chain=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{port}", mutual) as channel:
            assert [m.id for m in pb2_grpc.ChatServiceStub(channel).ListModels(ask, metadata=AUTH, timeout=5).data] == ["chat"]
        anonymous = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())  # no client certificate
        for channel in (grpc.secure_channel(f"127.0.0.1:{port}", anonymous), grpc.insecure_channel(f"127.0.0.1:{port}")):
            with channel, pytest.raises(grpc.RpcError) as refused:
                pb2_grpc.ChatServiceStub(channel).ListModels(ask, metadata=AUTH, timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.unit
def test_tls_files_go_together() -> None:
    from pydantic import ValidationError

    from routing.config import GrpcConfig

    for bad in ({"tls_cert_file": "c.pem"}, {"tls_key_file": "k.pem"}, {"tls_client_ca_file": "ca.pem"}):
        with pytest.raises(ValidationError):
            GrpcConfig(**bad)
    assert GrpcConfig(tls_cert_file="c.pem", tls_key_file="k.pem").tls_client_ca_file is None
