"""OpenTelemetry spans for each request and each backend attempt, when OpenTelemetry is there, and the W3C
trace context that joins them to the caller's trace and to the upstreams'.

Zero cost when it is not: `current()` returns None and every call site skips its span work behind one
`if`. It turns on when `opentelemetry-sdk` is installed and either `OTEL_EXPORTER_OTLP_ENDPOINT` is set
(spans are exported over OTLP/HTTP) or a test installs its own provider.

    join (pipeline.serve, every transport) -> the request's span, a child of the caller's `traceparent`
    start_attempt / end_attempt (the router's hooks) -> one CLIENT span per attempt on a deployment
    headers (backends.contract.trace_context, as a backend builds each upstream request) -> `traceparent`
    end_request (observe.finish) -> the response's attributes; the span ends

Names and attributes follow OpenTelemetry's GenAI semantic conventions as of semconv 1.37 (the first with
`gen_ai.provider.name`, which replaced `gen_ai.system`): spans are named `{gen_ai.operation.name}
{gen_ai.request.model}`; the request's span (kind SERVER) has the model the caller asked for, each attempt's
(kind CLIENT) the deployment's model and its `server.address`/`server.port`. The gateway's own facts stay
as `gateway.*` attributes.

Without a tracer the gateway is a proxy that does not participate in the trace: as W3C Trace Context asks
of one, it forwards a valid `traceparent` (and its `tracestate`) to the upstream unchanged, so the
caller's trace still reaches vLLM.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import orjson

from backends.contract import trace_context
from backends.contract.protocol import EmbeddingRequest, SamplingFields

log = logging.getLogger("llm_gateway.tracing")

_tracer: Any = None
_request: contextvars.ContextVar["RequestTrace | None"] = contextvars.ContextVar("llm_gateway_request_trace",
                                                                                   default=None)

# gen_ai.operation.name by the request's endpoint (a body's `endpoint`, or the record's for a request
# that never reached the pipeline).
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings", "messages": "chat",
              "responses": "chat"}
# gen_ai.provider.name by backend kind: the well-known values where there is one, else the kind's own name.
PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "vllm": "vllm", "llamacpp": "llama.cpp"}
MAX_TRACESTATE = 512  # W3C: propagate at least 512 characters; a longer one is dropped rather than cut


def current() -> Any:
    return _tracer


def install(provider: Any) -> None:
    """Use this TracerProvider (tests pass one with an in-memory exporter)."""
    global _tracer
    _tracer = provider.get_tracer("llm-gateway") if provider is not None else None


def setup_from_env() -> None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry is not installed "
                    "(pip install 'llm-gateway-server[otel]'); tracing stays off")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        "llm-gateway")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    log.info("tracing on: OTLP to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])


# -- without a tracer: the caller's context, forwarded ---------------------------------------------------

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")


@dataclass(frozen=True, slots=True)
class Forward:
    """A caller's trace headers, passed on unchanged to every upstream request (the gateway traces nothing)."""

    fields: dict[str, str]

    @classmethod
    def of(cls, traceparent: str, tracestate: str | None) -> "Forward | None":
        """None for a `traceparent` W3C calls invalid (and then its `tracestate` is not forwarded either)."""
        m = _TRACEPARENT.fullmatch(traceparent)
        if (m is None or m[1] == "ff" or (m[1] == "00" and m[4] is not None)
                or m[2] == "0" * 32 or m[3] == "0" * 16):
            return None
        fields = {"traceparent": traceparent}
        if tracestate and len(tracestate) <= MAX_TRACESTATE:
            fields["tracestate"] = tracestate
        return cls(fields)

    def headers(self, url: str) -> Mapping[str, str]:
        return self.fields

    def ids(self) -> tuple[str, str | None]:
        return self.fields["traceparent"][3:35], None  # the caller's trace; no span of ours


# -- with a tracer: a span for the request, one per attempt ----------------------------------------------

class RequestTrace:
    """One request's trace: its span, the caller's context (parent and baggage) and the attempt in progress.
    It is also what the backends ask for their upstream headers (`trace_context.current`)."""

    __slots__ = ("span", "parent", "context", "call", "deployments", "operation", "asked", "attempt")

    def __init__(self, span: Any, parent: Any, call: Any, deployments: Mapping[str, Any], operation: str | None,
                 asked: dict[str, Any]) -> None:
        from opentelemetry import trace

        self.span, self.parent, self.call, self.deployments = span, parent, call, deployments
        self.context = trace.set_span_in_context(span, parent)
        self.operation = operation
        self.asked = asked  # the gen_ai.request.* attributes (parameters), for each attempt's span too
        self.attempt: Any = None

    def headers(self, url: str) -> Mapping[str, str]:
        """`traceparent` (and `tracestate`, baggage: whatever the global propagator writes) of the attempt
        calling `url`; the attempt's span learns the server it called."""
        from opentelemetry import propagate, trace

        span = self.attempt
        if span is None:
            context = self.context
        else:
            parts = urlsplit(url)
            span.set_attributes({"server.address": parts.hostname or "",
                                 "server.port": parts.port or (443 if parts.scheme == "https" else 80)})
            context = trace.set_span_in_context(span, self.parent)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        return carrier

    def ids(self) -> tuple[str, str | None]:
        ctx = (self.attempt or self.span).get_span_context()
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    def start_attempt(self, tracer: Any, deployment: str, attempt: int) -> Any:
        from opentelemetry.trace import SpanKind

        dep = self.deployments.get(deployment)
        attrs: dict[str, Any] = {**self.asked, "gateway.deployment": deployment, "gateway.attempt": attempt}
        model = None
        if dep is not None:
            model = dep.config.model
            kind = dep.backend.kind
            attrs["gen_ai.provider.name"] = PROVIDERS.get(kind, kind)
            attrs["gen_ai.request.model"] = model
        else:
            attrs.pop("gen_ai.request.model", None)
        span = tracer.start_span(span_name(self.operation, model) or "gateway.attempt", context=self.context,
                                 kind=SpanKind.CLIENT, attributes=attrs)
        self.attempt = span
        return span


def join(call: Any, runtime: Any) -> None:
    """The start of the pipeline (pipeline.serve), for every transport: HTTP, gRPC (whose metadata are the
    call's headers) and batch lines. With a tracer, the request's span starts now (dated from the record's
    start) as a child of the caller's `traceparent`; without one, a valid `traceparent` goes upstream as is."""
    tracer = _tracer
    if tracer is None:
        given = call.headers.get("traceparent")
        forward = Forward.of(given, call.headers.get("tracestate")) if given else None
        if forward is not None or trace_context.current.get() is not None:
            trace_context.current.set(forward)
        return
    if call.rec.trace is not None:  # the same request through the pipeline once more
        return
    trace = _start_request(tracer, call, runtime.deployments)
    _request.set(trace)
    trace_context.current.set(trace)


def _start_request(tracer: Any, call: Any, deployments: Mapping[str, Any]) -> RequestTrace:
    from opentelemetry import propagate

    rec, body = call.rec, call.body
    operation = OPERATIONS.get(body.endpoint)
    parent = propagate.extract(call.headers)  # the global propagator: W3C trace context and baggage by default
    asked = requested(body, operation)
    attrs = {**asked, **_gateway_attributes(rec)}
    span = tracer.start_span(span_name(operation, body.model) or "gateway.request", context=parent,
                             kind=_kind(rec), attributes=attrs, start_time=_started_ns(rec))
    rec.span = span
    rec.trace = trace = RequestTrace(span, parent, call, deployments, operation, asked)
    return trace


def span_name(operation: str | None, model: str | None) -> str | None:
    """`{gen_ai.operation.name} {gen_ai.request.model}`, or the operation alone when the model is not known."""
    if operation is None:
        return None
    return f"{operation} {model}" if model else operation


def requested(body: Any, operation: str | None) -> dict[str, Any]:
    """The gen_ai.* attributes of what the caller asked for."""
    attrs: dict[str, Any] = {"gen_ai.request.model": body.model}
    if operation is not None:
        attrs["gen_ai.operation.name"] = operation
    if isinstance(body, SamplingFields):
        for name, value in (("max_tokens", body.max_output_tokens), ("temperature", body.temperature),
                            ("top_p", body.top_p), ("top_k", body.top_k), ("seed", body.seed),
                            ("frequency_penalty", body.frequency_penalty),
                            ("presence_penalty", body.presence_penalty)):
            if value is not None:
                attrs[f"gen_ai.request.{name}"] = value
        if body.n != 1:
            attrs["gen_ai.request.choice.count"] = body.n
        if body.stop:
            attrs["gen_ai.request.stop_sequences"] = list(body.stop)
    elif isinstance(body, EmbeddingRequest):
        attrs["gen_ai.request.encoding_formats"] = [body.encoding_format]
        if body.dimensions is not None:
            attrs["gen_ai.embeddings.dimension.count"] = body.dimensions
    return attrs


def _gateway_attributes(rec: Any) -> dict[str, Any]:
    attrs = {"gateway.request_id": rec.request_id, "gateway.endpoint": rec.endpoint,
             "gateway.transport": rec.transport}
    if rec.transport == "grpc":
        attrs["rpc.system"] = "grpc"
    return attrs


def _kind(rec: Any) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.INTERNAL if rec.batch is not None else SpanKind.SERVER  # a batch line has no caller waiting


def _started_ns(rec: Any) -> int:
    """The record's start (a monotonic clock) as the wall-clock time a span starts at."""
    return time.time_ns() - int((time.monotonic() - rec.started) * 1e9)


def start_attempt(deployment: str, attempt: int) -> Any:
    """A child span of the current request's span, or None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    trace = _request.get()
    if trace is not None:
        return trace.start_attempt(tracer, deployment, attempt)
    from opentelemetry.trace import SpanKind

    return tracer.start_span("gateway.attempt", kind=SpanKind.CLIENT,  # a router run outside the pipeline
                             attributes={"gateway.deployment": deployment, "gateway.attempt": attempt})


def end_attempt(span: Any, error: str | None = None) -> None:
    if span is None:
        return
    trace = _request.get()
    if trace is not None and trace.attempt is span:
        trace.attempt = None
    if error:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
        span.set_attributes({"error.type": error, "gateway.error": error})
    span.end()


class AttemptSpans:
    """The router's attempt hooks (routing.router.AttemptHooks): one child span per attempt."""

    def start(self, deployment: str, attempt: int) -> Any:
        return start_attempt(deployment, attempt)

    def end(self, token: Any, error: str | None) -> None:
        end_attempt(token, error)


def end_request(rec: Any, route: str, deployment: str, tier: str) -> None:
    """The request's span gets what it came to and ends (observe.finish). A request refused before the
    pipeline (an unparsable body, an anonymous caller) gets a span only now, with no caller's parent."""
    span = rec.span
    if span is None:
        tracer = _tracer
        if tracer is None:
            return
        span = rec.span = _late_span(tracer, rec)
    attrs: dict[str, Any] = {"gateway.route": route, "gateway.deployment": deployment,
                             "gateway.attempts": rec.attempts, "gateway.cache": rec.cache, "gateway.tier": tier,
                             "gateway.status": rec.status}
    if rec.transport == "http" and rec.batch is None:
        attrs["http.response.status_code"] = rec.status
    if rec.status >= 400:
        attrs["error.type"] = rec.error_code or str(rec.status)
    if rec.status < 400 or rec.prompt_tokens or rec.completion_tokens:
        attrs["gen_ai.usage.input_tokens"] = rec.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = rec.completion_tokens
    if rec.trace is not None:
        attrs.update(answered(rec.trace.call, rec.trace.operation))
    span.set_attributes(attrs)
    if rec.status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, rec.error_code or str(rec.status)))
    span.end()


def _late_span(tracer: Any, rec: Any) -> Any:
    operation = OPERATIONS.get(rec.endpoint)
    attrs = _gateway_attributes(rec)
    if operation is not None:
        attrs["gen_ai.operation.name"] = operation
    return tracer.start_span(operation or f"gateway {rec.endpoint}", kind=_kind(rec), attributes=attrs,
                             start_time=_started_ns(rec))


def answered(call: Any, operation: str | None) -> dict[str, Any]:
    """gen_ai.response.* and the provider of the deployment that answered, from the router's outcome
    (a stream's assembler, or the body, parsed once more only here: tracing is on)."""
    outcome = call.outcome
    if outcome is None or outcome.degraded:  # a cache hit, a failure before routing, the last resort
        return {}
    attrs: dict[str, Any] = {}
    dep = outcome.served_by
    if dep is not None:
        attrs["gen_ai.provider.name"] = PROVIDERS.get(dep.backend.kind, dep.backend.kind)
    if outcome.stream is not None:
        asm = outcome.assembler
        head, result = asm.head, asm.result()
    elif outcome.body is not None and operation != "embeddings":  # an embedding's body is large, and says little
        result = outcome.body
        if isinstance(result, (bytes, bytearray)):
            try:
                result = orjson.loads(result)
            except orjson.JSONDecodeError:
                return attrs
        head = result if isinstance(result, dict) else {}
    else:
        return attrs
    if head.get("id"):
        attrs["gen_ai.response.id"] = str(head["id"])
    if head.get("model"):
        attrs["gen_ai.response.model"] = str(head["model"])
    if isinstance(result, dict):
        reasons = [c.get("finish_reason") for c in result.get("choices") or () if isinstance(c, dict)]
        if any(reasons):
            attrs["gen_ai.response.finish_reasons"] = [str(r) for r in reasons if r]
    return attrs


def log_ids() -> tuple[str, str | None] | None:
    """(trace id, span id) of the request being served, for its log lines; None outside a traced request."""
    trace = trace_context.current.get()
    return trace.ids() if isinstance(trace, (RequestTrace, Forward)) else None
