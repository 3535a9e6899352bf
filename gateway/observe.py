"""The end of every request: one metrics update, one JSON log line, one span.

A `RequestRecord` travels with the request and is filled in as it goes; a
streamed answer finishes it when the stream ends, so latency and tokens are
the real ones. Nothing secret is logged: keys appear only as their alias, and
prompts only when `logging.log_prompts` is on, and then redacted.
"""

from __future__ import annotations

import contextvars
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.contract.priority import Priority
from gateway import metrics, request_log, tracing

_SECRETS = re.compile("|".join((
    r"sk-[A-Za-z0-9_\-]{8,}",  # OpenAI, Anthropic (sk-ant-), this gateway's own (sk-gw-)
    r"(?i:bearer|basic)\s+\S+",
    r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-.]+",  # JWTs
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{30,}",  # GitHub tokens
    r"\bAIza[A-Za-z0-9_\-]{30,}",  # Google API keys
    r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack tokens
    r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}",  # e-mail addresses
    r"\b\d(?:[ \-]?\d){12,18}\b",  # card numbers, also written in groups with spaces or dashes
)))


def redact(text: str) -> str:
    """Mask what looks like a secret (API keys and tokens of the usual providers, bearer and basic
    credentials, JWTs), e-mail addresses and card numbers, and the gateway's own master and admin keys,
    whatever their shape."""
    for own in _own:
        text = text.replace(own, "[REDACTED]")
    return _SECRETS.sub("[REDACTED]", text)


_own: tuple[str, ...] = ()


def own_secrets(*secrets: str | None) -> None:
    """The gateway's own master and admin keys, which `redact` masks whatever their shape (set at start-up)."""
    global _own
    _own = tuple(s for s in secrets if s and len(s) >= 4)


# The request being served, for the event log lines written meanwhile (gateway.logsetup's JSON format).
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("llm_gateway_request_id",
                                                                                default=None)

_LABELS = {p: p.label for p in Priority}
_BATCH, _INTERACTIVE = Priority.BATCH.label, Priority.INTERACTIVE.label

_live = [0]  # live (not batch) requests in flight in this process: batches run only on spare capacity


def live_in_flight() -> int:
    return _live[0]


@dataclass
class RequestRecord:
    request_id: str
    endpoint: str
    started: float = field(default_factory=time.monotonic)
    route: str = metrics.UNKNOWN
    deployment: str = "-"
    attempts: int = 0
    retries: int = 0
    status: int = 200
    error_code: str | None = None
    cache: str = "bypass"
    key_alias: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    overhead_s: float | None = None
    stream: bool = False
    deferred: bool = False  # a stream: finished when the stream ends
    prompt: Any = None  # only with logging.log_prompts
    completion: str | None = None
    span: Any = None  # the request's span, while tracing is on (gateway.tracing)
    trace: Any = None  # and the rest of its trace (tracing.RequestTrace): the caller's context, the attempt
    done: bool = False
    batch: str | None = None  # the batch this request is a line of (None: a live request)
    priority: Priority | None = None  # its class, once decided (gateway.pipeline.serve); None: interactive
    transport: str = "http"  # or "grpc" (gateway/grpc_api): in the log line and the span when not http

    @property
    def tier(self) -> str:
        """What usage, spend, metrics and the log line split requests by: the request's class, by its label.
        The one place it is read from: a batch line is batch whatever else is set, any other request is
        the class it was given (interactive when none was)."""
        if self.batch is not None:
            return _BATCH
        return _LABELS[self.priority] if self.priority is not None else _INTERACTIVE
    queue_wait_s: float = 0.0  # waited for capacity: a concurrency limit, a deployment's slot
    holds: list[Any] = field(default_factory=list)  # places under concurrency limits, given back at the end

    def release_holds(self) -> None:
        holds, self.holds = self.holds, []
        for hold in holds:
            hold.release()

    def begin(self) -> None:
        metrics.IN_FLIGHT.inc()
        if self.batch is None:
            _live[0] += 1
        # The span starts once the pipeline has the caller's headers (tracing.join), dated from `started`.
        current_request_id.set(self.request_id)


def finish(rec: RequestRecord) -> None:
    if rec.done:
        return
    rec.done = True
    if rec.holds:
        rec.release_holds()
    metrics.IN_FLIGHT.dec()
    if rec.batch is None:
        _live[0] -= 1
    total = time.monotonic() - rec.started
    route, dep = rec.route, rec.deployment
    child = metrics.child
    status, tier = str(rec.status), rec.tier
    child(metrics.REQUESTS, route, dep, status, rec.cache).inc()
    child(metrics.TIER_REQUESTS, tier, route, status).inc()
    if rec.error_code == "internal_error":
        child(metrics.INTERNAL_ERRORS, route).inc()
    if rec.status < 400:
        child(metrics.DURATION, route).observe(total)
        if rec.ttft_s is not None:
            child(metrics.TTFT, route).observe(rec.ttft_s)
        if rec.overhead_s is not None:
            child(metrics.OVERHEAD, route).observe(rec.overhead_s)
    if rec.prompt_tokens:
        child(metrics.PROMPT_TOKENS, route, dep).inc(rec.prompt_tokens)
    if rec.completion_tokens:
        child(metrics.COMPLETION_TOKENS, route, dep).inc(rec.completion_tokens)
    line: dict[str, Any] = {
        "ts": round(time.time(), 3), "event": "request", "request_id": rec.request_id, "endpoint": rec.endpoint,
        "route": route, "deployment": dep, "attempts": rec.attempts, "status": rec.status,
        "error_code": rec.error_code, "latency_ms": round(total * 1000, 2),
        "ttft_ms": round(rec.ttft_s * 1000, 2) if rec.ttft_s is not None else None,
        "overhead_ms": round(rec.overhead_s * 1000, 3) if rec.overhead_s is not None else None,
        "prompt_tokens": rec.prompt_tokens, "completion_tokens": rec.completion_tokens, "cache": rec.cache,
        "stream": rec.stream, "key_alias": rec.key_alias, "tier": tier,
        "priority": rec.priority.label if rec.priority is not None else _INTERACTIVE,
    }
    if rec.queue_wait_s:
        line["queue_ms"] = round(rec.queue_wait_s * 1000, 2)
    if rec.batch is not None:
        line["batch_id"] = rec.batch
    if rec.transport != "http":
        line["transport"] = rec.transport
    if rec.prompt is not None:
        line["prompt"] = redact(orjson.dumps(rec.prompt).decode())
        line["completion"] = redact(rec.completion or "")
    request_log.write(orjson.dumps(line))
    if rec.span is not None or tracing.current() is not None:
        tracing.end_request(rec, route, dep, tier)
