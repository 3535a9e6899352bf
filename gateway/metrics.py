"""Prometheus metrics: what the gateway does, how long it takes, and what it costs itself.

Labels take only values the operator configured (route and deployment names,
HTTP status codes, cache results), never a value a client chose, and never a
secret. With several uvicorn workers, `PROMETHEUS_MULTIPROC_DIR` is set
before the workers start (`llm-gateway serve --workers N` does it), and
`/metrics` merges every worker's files.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from backends.contract.priority import Priority

MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
UNKNOWN = "_unknown"  # a model name no route claims: never echoed into a label

REQUESTS = Counter("llm_gateway_requests", "Requests answered, by route, deployment, HTTP status and cache result.",
                   ["route", "deployment", "status", "cache"])
# Apart from REQUESTS, whose labels dashboards already match exactly: a few tiers times routes and statuses.
TIER_REQUESTS = Counter("llm_gateway_requests_by_tier", "Requests answered, by tier (interactive, near-real-time, "
                        "batch: a batch's lines), route and HTTP status.", ["tier", "route", "status"])
PROMPT_TOKENS = Counter("llm_gateway_prompt_tokens", "Prompt tokens, by route and deployment.",
                        ["route", "deployment"])
COMPLETION_TOKENS = Counter("llm_gateway_completion_tokens", "Completion tokens, by route and deployment.",
                            ["route", "deployment"])
RATE_LIMITED = Counter("llm_gateway_rate_limited", "Requests refused by a rate limit or a budget.",
                       ["route", "reason"])
RETRIES = Counter("llm_gateway_retries", "Backend attempts that failed and were retried or failed over.",
                  ["route", "deployment"])
FAILOVERS = Counter("llm_gateway_failovers", "Requests answered by another deployment than the first tried.",
                    ["route"])
INTERNAL_ERRORS = Counter("llm_gateway_internal_errors", "Requests that failed on an error of the gateway's own "
                          "(logged with its traceback); each is that request's 500 alone.", ["route"])
REDIS_ERRORS = Counter("llm_gateway_redis_errors", "Redis calls that failed or timed out (the gateway failed open).")
DURATION = Histogram("llm_gateway_request_duration_seconds", "End-to-end latency, to the last byte.", ["route"],
                     buckets=LATENCY_BUCKETS)
TTFT = Histogram("llm_gateway_time_to_first_token_seconds", "Time to the first byte of the answer.", ["route"],
                 buckets=LATENCY_BUCKETS)
OVERHEAD = Histogram("llm_gateway_overhead_seconds",
                     "The gateway's own time: total to the answer's start, minus time waiting on backends.",
                     ["route"], buckets=OVERHEAD_BUCKETS)
IN_FLIGHT = Gauge("llm_gateway_in_flight_requests", "Requests being served.", multiprocess_mode="livesum")
BREAKER = Gauge("llm_gateway_breaker_state", "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open.",
                ["deployment"], multiprocess_mode="max")
HEALTHY = Gauge("llm_gateway_deployment_healthy", "1 when the last health check passed.", ["deployment"],
                multiprocess_mode="min")
# Every worker reads the same (shared) engine processes, so these are the same in each: take one, never a sum.
QUEUE_DEPTH = Gauge("llm_gateway_local_queue_depth", "Requests waiting for a local model.", ["model"],
                    multiprocess_mode="livemostrecent")
LOCAL_IN_FLIGHT = Gauge("llm_gateway_local_busy_instances", "Local model instances generating now.", ["model"],
                        multiprocess_mode="livemostrecent")
# The schedulers (routing/scheduler.py): one per deployment with a capacity, per worker, so these add up.
SCHED_WAITING = Gauge("llm_gateway_scheduler_queue_depth", "Requests waiting for a slot of a deployment, by class.",
                      ["deployment", "priority"], multiprocess_mode="livesum")
SCHED_IN_SERVICE = Gauge("llm_gateway_scheduler_in_service", "Slots of a deployment held now, by class.",
                         ["deployment", "priority"], multiprocess_mode="livesum")
QUEUE_WAIT = Histogram("llm_gateway_scheduler_wait_seconds", "Time requests waited for a slot of a deployment "
                       "(only those that waited), by class.", ["deployment", "priority"], buckets=LATENCY_BUCKETS)
QUEUE_REFUSED = Counter("llm_gateway_scheduler_refused", "Requests that got no slot of a deployment: its queue was "
                        "full, the wait ran out, or a more urgent request took the place.",
                        ["deployment", "priority", "reason"])
CONCURRENCY_WAIT = Histogram("llm_gateway_concurrency_wait_seconds", "Time requests waited for their key's or "
                             "route's max_concurrent_requests (only where one is set).", ["route", "priority"],
                             buckets=LATENCY_BUCKETS)

BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}


class EngineCollector:
    """Engine restarts and safe mode, read from the engines' supervisor at scrape time.

    The supervisor counts restarts (it may be another process: the parent of `--workers N`), and every
    worker holds the same copy of its counts, so these are exported as they are, from whichever worker
    is scraped, rather than counted again in each.
    """

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Any]:
        restarts = CounterMetricFamily("llm_gateway_engine_restarts", "Local engine processes restarted, by model "
                                       "and exit reason (signal name or exit code).", labels=["model", "reason"])
        safe = GaugeMetricFamily("llm_gateway_engine_safe_mode", "1 when a local model runs in safe mode (no "
                                 "extra buffer types) after crashing while loading.", labels=["model"])
        for backend in self.runtime.local_backends():
            extra = backend.status().extra
            for reason, count in (extra.get("restarts_by_reason") or {}).items():
                restarts.add_metric([backend.name, reason], count)
            safe.add_metric([backend.name], 1 if extra.get("safe_mode") else 0)
        yield restarts
        yield safe


def exposition(runtime: Any = None) -> tuple[bytes, str]:
    """The text format, merged over workers in multiprocess mode, with the engines' counts."""
    if MULTIPROC:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY

        registry = REGISTRY
    body = generate_latest(registry)
    if runtime is not None:
        engines = CollectorRegistry(auto_describe=False)
        engines.register(EngineCollector(runtime))  # type: ignore[arg-type]
        body += generate_latest(engines)
    return body, CONTENT_TYPE_LATEST


def refresh_gauges(runtime) -> None:  # type: ignore[no-untyped-def]
    """Breakers, health and local queues, read from the live runtime (called at scrape time)."""
    for name, dep in runtime.deployments.items():
        BREAKER.labels(name).set(BREAKER_CODES.get(dep.breaker.state, 0))
        HEALTHY.labels(name).set(1 if dep.healthy else 0)
        scheduler = dep.scheduler
        if scheduler.limited:
            for p in Priority:
                SCHED_WAITING.labels(name, p.label).set(scheduler.depth(p))
                SCHED_IN_SERVICE.labels(name, p.label).set(scheduler.in_service(p))
    for backend in runtime.local_backends():
        stats = backend.status().stats
        QUEUE_DEPTH.labels(backend.name).set(stats.get("queue_depth", 0))
        LOCAL_IN_FLIGHT.labels(backend.name).set(stats.get("busy", 0))


def observe_queue_wait(deployment: str, priority: Priority, seconds: float, refusal: str | None) -> None:
    """The router's `on_wait`: a wait for a deployment's slot ended (granted, refused, or its client left)."""
    child(QUEUE_WAIT, deployment, priority.label).observe(seconds)
    if refusal is not None and refusal != "left":
        child(QUEUE_REFUSED, deployment, priority.label, refusal).inc()


_children: dict[tuple, object] = {}


def child(metric: Counter | Gauge | Histogram, *labels: str):  # type: ignore[no-untyped-def]
    """`metric.labels(*labels)`, remembered: the hot path asks for the same few series every request,
    and prometheus-client validates and locks on every `labels()` call."""
    key = (id(metric), *labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found
