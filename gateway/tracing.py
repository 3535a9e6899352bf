"""OpenTelemetry spans for each request and each backend attempt, when OpenTelemetry is there.

Zero cost when it is not: `current()` returns None and every call site skips
its span work behind one `if`. It turns on when `opentelemetry-sdk` is
installed and either `OTEL_EXPORTER_OTLP_ENDPOINT` is set (spans are exported
over OTLP/HTTP) or a test installs its own provider.
"""

from __future__ import annotations

import contextvars
import logging
import os
from typing import Any

log = logging.getLogger("llm_gateway.tracing")

_tracer: Any = None
request_span: contextvars.ContextVar[Any] = contextvars.ContextVar("llm_gateway_request_span", default=None)


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
                    "(pip install 'llm-gateway[otel]'); tracing stays off")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME",
                                                                                        "llm-gateway")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    log.info("tracing on: OTLP to %s", os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"])


def start_attempt(deployment: str, attempt: int) -> Any:
    """A child span of the current request's span, or None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry import trace

    parent = request_span.get()
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    return tracer.start_span("gateway.attempt", context=ctx,
                             attributes={"gateway.deployment": deployment, "gateway.attempt": attempt})


def end_attempt(span: Any, error: str | None = None) -> None:
    if span is None:
        return
    if error:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, error))
        span.set_attribute("gateway.error", error)
    span.end()


class AttemptSpans:
    """The router's attempt hooks (routing.router.AttemptHooks): one child span per attempt."""

    def start(self, deployment: str, attempt: int) -> Any:
        return start_attempt(deployment, attempt)

    def end(self, token: Any, error: str | None) -> None:
        end_attempt(token, error)
