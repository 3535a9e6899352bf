"""Trace context: a caller's W3C `traceparent` (an HTTP header, or gRPC metadata) is the parent of the gateway's
request span, each attempt's span is the parent the upstream sees in the `traceparent` it is sent (vLLM,
OpenAI-compatible, Anthropic), and the spans carry OpenTelemetry's GenAI attributes. Without a tracer the
caller's context goes upstream unchanged.

The process tests share one gateway, served in this process (so a test can install a TracerProvider with an
in-memory exporter) on the session's simulated upstreams; the unit tests check the W3C parsing alone.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from backends.contract import trace_context
from gateway import tracing
from tests.routing_env import ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import free_port
from tests.sim import Fault
from tests.sim.base import RecordedRequest

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "caller=abc123,other=xyz"
MSGS = [{"role": "user", "content": "Trace me"}]
MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/messages")


# -- unit: the W3C header, parsed and forwarded -------------------------------------------------------------

@pytest.mark.parametrize("given", [
    TRACEPARENT,
    f"00-{TRACE_ID}-{PARENT_ID}-00",  # not sampled: forwarded all the same
    f"cc-{TRACE_ID}-{PARENT_ID}-01-what-a-later-version-adds",  # a later version: its prefix is read
])
def test_a_valid_traceparent_is_forwarded_as_is(given: str) -> None:
    forward = tracing.Forward.of(given, TRACESTATE)
    assert forward is not None
    assert forward.headers("http://upstream/v1/chat/completions") == {"traceparent": given, "tracestate": TRACESTATE}
    assert forward.ids() == (TRACE_ID, None)


@pytest.mark.parametrize("given", [
    f"00-{'0' * 32}-{PARENT_ID}-01",  # an all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # an all-zero parent id
    f"ff-{TRACE_ID}-{PARENT_ID}-01",  # the forbidden version
    f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # upper-case hex
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has nothing after the flags
    f"00-{TRACE_ID[:-1]}-{PARENT_ID}-01",  # a short trace id
    "garbage",
])
def test_an_invalid_traceparent_is_dropped_with_its_tracestate(given: str) -> None:
    assert tracing.Forward.of(given, TRACESTATE) is None


def test_a_tracestate_longer_than_w3c_asks_to_keep_is_dropped() -> None:
    forward = tracing.Forward.of(TRACEPARENT, "k=" + "v" * 600)
    assert forward is not None and forward.headers("http://x") == {"traceparent": TRACEPARENT}


def test_backends_add_nothing_when_no_request_context_is_set() -> None:
    headers = {"Authorization": "Bearer sk-x"}
    assert trace_context.with_trace(headers, "http://x") is headers  # the same dict: nothing copied
    token = trace_context.current.set(tracing.Forward.of(TRACEPARENT, None))
    try:
        assert trace_context.with_trace(headers, "http://x") == {**headers, "traceparent": TRACEPARENT}
        assert headers == {"Authorization": "Bearer sk-x"}  # the backend's own headers are left alone
    finally:
        trace_context.current.reset(token)


def test_a_callers_context_is_not_carried_over_to_the_next_request_in_the_same_task() -> None:
    """(A task that serves several requests in turn keeps no earlier caller's context.)"""

    class Call:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    context = contextvars.Context()
    context.run(tracing.join, Call({"traceparent": TRACEPARENT}), None)
    assert context.run(trace_context.with_trace, {}, "http://x") == {"traceparent": TRACEPARENT}
    context.run(tracing.join, Call({}), None)
    assert context.run(trace_context.with_trace, {}, "http://x") == {}


# -- process: a gateway served here, on the simulators --------------------------------------------------------

class Served:
    def __init__(self, port: int, grpc_port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/v1"
        self.grpc_port = grpc_port


@pytest.fixture(scope="module")
def served(sims: Sims) -> Iterator[Served]:  # noqa: F811
    import uvicorn

    from gateway.app import create_app
    from routing.config import GatewayConfig

    sims.reset()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REDIS_URL", raising=False)
        mp.delenv("LLM_GATEWAY_MASTER_KEY", raising=False)
        mp.setenv("SIM_OPENAI_KEY", OPENAI_KEY)
        mp.setenv("SIM_ANTHROPIC_KEY", ANTHROPIC_KEY)
        raw = base_config(sims)
        grpc_port = free_port()
        raw["server"] = {**raw["server"], "grpc": {"enabled": True, "port": grpc_port}}
        raw["cache"] = {"enabled": False}
        cfg = GatewayConfig.model_validate(raw)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive(), "the gateway did not start"
                time.sleep(0.02)
            yield Served(port, grpc_port)
        finally:
            server.should_exit = True
            thread.join(15)
            sims.reset()


@pytest.fixture
def exporter(sims: Sims, served: Served) -> Iterator[Any]:  # noqa: F811
    """Tracing on, into memory, for one test."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    sims.reset()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.install(None)
        sims.reset()


def post(served: Served, path: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    r = httpx.post(f"{served.url}{path}", headers=headers or {}, json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r


def model_calls(*sims_: Any) -> list[RecordedRequest]:
    return [r for s in sims_ for r in s.requests if r.path in MODEL_PATHS]


def hexid(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def spans_named(memory: Any, name: str) -> list[Any]:
    return [s for s in memory.get_finished_spans() if s.name == name]


@pytest.mark.process
def test_the_callers_span_is_the_parent_and_each_upstream_sees_its_attempt(
        sims: Sims, served: Served, exporter: Any) -> None:  # noqa: F811
    sims.a.add_fault(Fault.status(503))  # a fails, b answers: two attempts, two upstream requests
    post(served, "/chat/completions", {"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
         model="chat-default", messages=MSGS, max_tokens=40, temperature=0.5, top_p=0.9)
    [request] = spans_named(exporter, "chat chat-default")
    attempts = spans_named(exporter, "chat vllm-model")
    assert len(attempts) == 2
    assert hexid(request.context.trace_id, 32) == TRACE_ID
    assert request.parent is not None and request.parent.is_remote
    assert hexid(request.parent.span_id, 16) == PARENT_ID
    assert request.kind.name == "SERVER" and all(a.kind.name == "CLIENT" for a in attempts)
    assert all(a.parent.span_id == request.context.span_id for a in attempts)
    # Each upstream request names its own attempt as the parent, in the caller's trace.
    (to_a,), (to_b,) = model_calls(sims.a), model_calls(sims.b)
    for attempt, sent in zip(attempts, (to_a, to_b)):
        assert sent.headers["traceparent"] == f"00-{TRACE_ID}-{hexid(attempt.context.span_id, 16)}-01"
        assert sent.headers["tracestate"] == TRACESTATE
    failed, answered = attempts
    assert failed.attributes["gateway.deployment"] == "a" and answered.attributes["gateway.deployment"] == "b"
    assert failed.status.status_code.name == "ERROR" and failed.attributes["error.type"] == "server_error"
    assert answered.status.status_code.name == "UNSET" and "error.type" not in answered.attributes
    for attempt, sim in zip(attempts, (sims.a, sims.b)):
        a = attempt.attributes
        assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.request.model"]) == \
            ("chat", "vllm", "vllm-model")
        assert (a["server.address"], a["server.port"]) == ("127.0.0.1", sim.port)
        assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"], a["gen_ai.request.top_p"]) == \
            (40, 0.5, 0.9)
    r = request.attributes
    assert (r["gen_ai.operation.name"], r["gen_ai.request.model"], r["gen_ai.provider.name"]) == \
        ("chat", "chat-default", "vllm")
    assert (r["gen_ai.request.max_tokens"], r["gen_ai.request.temperature"], r["gen_ai.request.top_p"]) == \
        (40, 0.5, 0.9)
    assert r["gen_ai.response.model"] == "vllm-model" and r["gen_ai.response.id"].startswith("chatcmpl-")
    assert tuple(r["gen_ai.response.finish_reasons"]) == ("stop",)
    assert r["gen_ai.usage.input_tokens"] > 0 and r["gen_ai.usage.output_tokens"] > 0
    assert r["http.response.status_code"] == 200 and r["gateway.deployment"] == "b" and r["gateway.attempts"] == 2


@pytest.mark.process
def test_every_backend_kind_and_a_stream_carry_the_context(
        sims: Sims, served: Served, exporter: Any) -> None:  # noqa: F811
    given = {"traceparent": TRACEPARENT}
    with httpx.stream("POST", f"{served.url}/chat/completions", headers=given, timeout=30,
                      json={"model": "claude", "messages": MSGS, "stream": True}) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    post(served, "/chat/completions", given, model="gpt-first", messages=MSGS)
    post(served, "/completions", given, model="chat-default", prompt="Once upon a time", max_tokens=8)
    for sims_ in ((sims.claude,), (sims.gpt,), (sims.a, sims.b)):
        [sent] = model_calls(*sims_)
        assert sent.headers["traceparent"].startswith(f"00-{TRACE_ID}-"), (sent.path, sent.headers)
    [claude] = spans_named(exporter, "chat claude-haiku-4-5")
    assert claude.attributes["gen_ai.provider.name"] == "anthropic"
    assert model_calls(sims.claude)[0].headers["traceparent"].split("-")[2] == hexid(claude.context.span_id, 16)
    [streamed] = spans_named(exporter, "chat claude")  # the request's span, finished when its stream ended
    s = streamed.attributes
    assert tuple(s["gen_ai.response.finish_reasons"]) == ("stop",) and s["gen_ai.response.model"]
    assert s["gen_ai.usage.output_tokens"] > 0
    [gpt] = spans_named(exporter, "chat sim-model")
    assert (gpt.attributes["gen_ai.provider.name"], gpt.attributes["server.port"]) == ("openai", sims.gpt.port)
    [completion] = spans_named(exporter, "text_completion chat-default")
    assert completion.attributes["gen_ai.operation.name"] == "text_completion"
    assert completion.attributes["gen_ai.request.max_tokens"] == 8
    assert all(hexid(s.context.trace_id, 32) == TRACE_ID for s in exporter.get_finished_spans())


@pytest.mark.process
def test_a_request_without_a_traceparent_starts_a_trace_that_reaches_the_upstream(
        sims: Sims, served: Served, exporter: Any) -> None:  # noqa: F811
    post(served, "/chat/completions", model="chat-default", messages=MSGS)
    [request] = spans_named(exporter, "chat chat-default")
    [attempt] = spans_named(exporter, "chat vllm-model")
    assert request.parent is None
    [sent] = model_calls(sims.a, sims.b)
    ours = f"00-{hexid(request.context.trace_id, 32)}-{hexid(attempt.context.span_id, 16)}-"
    assert sent.headers["traceparent"].startswith(ours)


@pytest.mark.process
def test_grpc_metadata_carry_the_callers_context(sims: Sims, served: Served, exporter: Any) -> None:  # noqa: F811
    import grpc

    from gateway.grpc_api.codegen import load

    pb2, pb2_grpc = load()
    message = json_format.ParseDict({"model": "chat-default", "messages": MSGS}, pb2.ChatCompletionRequest())
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb2_grpc.ChatServiceStub(channel)
        stub.CreateChatCompletion(message, timeout=30, metadata=(("traceparent", TRACEPARENT),))
    [request] = spans_named(exporter, "chat chat-default")
    assert hexid(request.parent.span_id, 16) == PARENT_ID and hexid(request.context.trace_id, 32) == TRACE_ID
    assert request.attributes["gateway.transport"] == "grpc" and request.attributes["rpc.system"] == "grpc"
    assert "http.response.status_code" not in request.attributes
    [sent] = model_calls(sims.a, sims.b)
    assert sent.headers["traceparent"].startswith(f"00-{TRACE_ID}-")


@pytest.mark.process
def test_without_a_tracer_the_callers_context_goes_upstream_unchanged(sims: Sims, served: Served) -> None:  # noqa: F811
    assert tracing.current() is None
    sims.reset()
    sent = {"valid": {"traceparent": TRACEPARENT, "tracestate": TRACESTATE},
            "invalid": {"traceparent": f"00-{'0' * 32}-{PARENT_ID}-01", "tracestate": TRACESTATE},
            "none": {}}  # invalid: neither it nor its tracestate is forwarded; none given: none sent
    for name, headers in sent.items():
        post(served, "/chat/completions", headers, model="chat-default", messages=[{"role": "user", "content": name}])
    got = {r.body["messages"][0]["content"]: r for r in model_calls(sims.a, sims.b)}
    valid, invalid, none = got["valid"], got["invalid"], got["none"]
    assert (valid.headers["traceparent"], valid.headers["tracestate"]) == (TRACEPARENT, TRACESTATE)
    for sent in (invalid, none):
        assert "traceparent" not in sent.headers and "tracestate" not in sent.headers
    sims.reset()
