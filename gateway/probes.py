"""What `/ready` and `/health` decide, apart from how they answer (gateway/routes/health.py).

**Readiness is what this pod controls**: its required local models, loaded and warmed up. A remote
provider's outage is every replica's outage at once; taking every pod out of the Service for it would
also take away what each one still serves (other routes, the cache, the local models) and turn the
router's quick failovers, last-resort answers and 503s into refused connections. So a route with no
usable deployment is reported (`degraded`, and per route under `routes`) while `/ready` stays 200,
unless the route says `ready_requires_upstreams: true` (for a load balancer that should move its
traffic to another cluster when this one cannot reach the route's upstreams).

**Liveness is whether a restart of the process could help.** A required local model that its
supervisor gave up on (`failed`: it cannot load, or crashed while loading in safe mode too) will not
serve in this process again, so once it has been failed for `server.liveness_failed_after_s`,
`/health` turns 503 and the kubelet restarts the pod (a fresh load; and a pod that cannot load its
model shows as CrashLoopBackOff instead of an unready pod nobody looks at). A model that is
`restarting` is left to its supervisor, which already does what a container restart would (a fresh
engine process, with backoff) without dropping the pod's other routes; nor does a model that is
still loading fail liveness (a load has no deadline here; the readiness probe keeps traffic away).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from backends.base import Backend
from routing.runtime import Route, Runtime


@dataclass
class ReadyReport:
    not_ready: list[str]  # what keeps this pod from taking traffic: required models, opted-in routes
    degraded: list[str]  # what serves less than it should, without making the pod unready
    detail: dict[str, Any] = field(default_factory=dict)  # for the admin: backends, routes, scheduling...

    @property
    def status(self) -> str:
        return "not_ready" if self.not_ready else "degraded" if self.degraded else "ready"

    def body(self) -> dict[str, Any]:
        return {"status": self.status, "not_ready": self.not_ready, "degraded": self.degraded, **self.detail}


def assess_readiness(runtime: Runtime, redis: dict[str, Any], cache_redis: dict[str, Any] | None = None) -> ReadyReport:
    """`redis`: the durable Redis's link status; `cache_redis`: the response cache's own Redis's
    (`redis.cache_url`), None when the cache shares the durable one."""
    report = ReadyReport([], [])
    backends = {}
    for backend in runtime.local_backends():
        status = backend.status()
        backends[backend.name] = status.as_dict()
        if status.required and status.state != "ready":
            report.not_ready.append(backend.name)
    deployments = {}
    scheduling = {}  # every deployment with a capacity: its slots in service and its queue, per class
    for dep in runtime.deployments.values():
        if dep.config.provider != "local":
            deployments[dep.name] = {"kind": dep.backend.kind, "healthy": dep.healthy, "breaker": dep.breaker.state}
        if dep.scheduler.limited:
            scheduling[dep.name] = dep.scheduler.snapshot()
    routes = {route.name: _route_view(route, report) for route in runtime.route_list}
    # Redis only degrades the gateway (cache and limits fail open); it never makes it unready. Nor does the
    # cache's own Redis: every request a miss, served uncached.
    redises = {"redis": redis} if cache_redis is None else {"redis": redis, "cache_redis": cache_redis}
    report.degraded += [name for name, status in redises.items() if status.get("state") == "degraded"]
    report.detail = {"backends": backends, "deployments": deployments, "scheduling": scheduling,
                     "routes": routes, **redises, "config_version": runtime.version}
    return report


def _route_view(route: Route, report: ReadyReport) -> dict[str, Any]:
    usable = sum(1 for d in route.deployments if d.healthy and d.backend.status().state == "ready")
    view: dict[str, Any] = {"usable_deployments": usable, "deployments": len(route.deployments)}
    if route.config.ready_requires_upstreams:
        view["ready_requires_upstreams"] = True
    if usable == 0:
        (report.not_ready if route.config.ready_requires_upstreams else report.degraded).append(f"route:{route.name}")
    return view


@dataclass
class LiveReport:
    failed_for_s: dict[str, float]  # each required local model in `failed` now: for how long, as seen here
    after_s: float | None  # server.liveness_failed_after_s

    @property
    def failing(self) -> list[str]:
        """The models that make this process worth restarting now."""
        if self.after_s is None:
            return []
        return [name for name, s in self.failed_for_s.items() if s >= self.after_s]


class Liveness:
    """Since when each required local model has been `failed`, as this worker has seen it.

    It is seen by the probes themselves (`/health` and `/ready`, every few seconds from a kubelet), so
    the time counts from the first probe that found the model failed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: dict[int, tuple[Backend, float]] = {}  # by id(backend); the backend held so no id is reused

    def observe(self, backends: Iterable[Backend], after_s: float | None) -> LiveReport:
        now = self._clock()
        seen: dict[int, tuple[Backend, float]] = {}
        for backend in backends:
            status = backend.status()
            if status.required and status.state == "failed":
                _, since = self._since.get(id(backend), (backend, now))
                seen[id(backend)] = (backend, since)
        self._since = seen  # a model that left `failed` (or a reload replaced) starts afresh next time
        return LiveReport({b.name: now - since for b, since in seen.values()}, after_s)
