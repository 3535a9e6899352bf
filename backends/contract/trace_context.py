"""Trace context for upstream requests: the headers (W3C `traceparent`, `tracestate`) that join an upstream's
trace to the gateway's, so a vLLM server's spans are children of the attempt that called it.

The gateway sets `current` for the task that serves a request (gateway.tracing); a backend passes the headers
of each request it sends through `with_trace`. Backends never learn whether OpenTelemetry is there: when no
request context is set (tracing off and the caller sent none, a health probe) it costs one context-variable
read and returns the same dict. A context variable follows the request into the tasks it starts, and never
leaks to another request's task.
"""

from __future__ import annotations

import contextvars
from typing import Mapping, Protocol


class UpstreamTrace(Protocol):
    def headers(self, url: str) -> Mapping[str, str]:
        """The headers to add to one request to `url` (empty: none). Told the URL, the gateway's tracing can
        name the server on the attempt's span."""


current: contextvars.ContextVar[UpstreamTrace | None] = contextvars.ContextVar("llm_gateway_upstream_trace",
                                                                                default=None)


def with_trace(headers: dict[str, str], url: str) -> dict[str, str]:
    """`headers` plus the current request's trace headers; `headers` itself (not a copy) when there are none."""
    trace = current.get()
    if trace is None:
        return headers
    extra = trace.headers(url)
    return {**headers, **extra} if extra else headers
