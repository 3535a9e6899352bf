"""Liveness and readiness (what they decide, and why: gateway/probes.py).

`/health` is 200 while the process serves HTTP, and 503 once a required local model has been `failed`
(its supervisor gave up on it) for `server.liveness_failed_after_s`: only a restart can bring it back.
`/ready` is 200 when every required local model is loaded and warmed up. A route with no usable
deployment (every upstream down) is listed under `degraded` and leaves it 200, unless the route says
`ready_requires_upstreams: true`; so does a Redis in trouble (`redis`, and `cache_redis` when the cache has
a server of its own).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import metrics
from gateway.probes import Liveness, LiveReport, assess_readiness
from gateway.routes.admin import is_admin, require_admin

router = APIRouter()

_HEALTH = orjson.dumps({"status": "ok"})


def _liveness(request: Request) -> LiveReport:
    state = request.app.state
    tracker = getattr(state, "liveness", None)
    if tracker is None:
        tracker = state.liveness = Liveness()
    runtime = state.manager.current
    return tracker.observe(runtime.local_backends(), runtime.config.server.liveness_failed_after_s)


def _detail_allowed(request: Request) -> bool:
    """Probes need the status code; the names of models, deployments and engines are for the admin."""
    return not request.app.state.services.auth.enabled or is_admin(request)


def _health(request: Request) -> Response:
    live = _liveness(request)
    failing = live.failing
    if not failing:
        return Response(_HEALTH, media_type="application/json")
    body: dict = {"status": "unhealthy"}
    if _detail_allowed(request):
        body.update(failed=failing, failed_after_s=live.after_s)
    return Response(orjson.dumps(body), status_code=503, media_type="application/json")


@router.head("/health", include_in_schema=False)
async def health_head(request: Request) -> Response:
    return _health(request)


@router.get("/health")
async def health(request: Request) -> Response:
    return _health(request)


@router.get("/ready")
async def ready(request: Request) -> Response:
    runtime = request.app.state.manager.current
    svc = request.app.state.services
    report = assess_readiness(runtime, svc.link.status(), svc.cache_link.status() if svc.cache_link else None)
    live = _liveness(request)  # /ready sees a failed model too, so its time counts from the first probe
    body = report.body()
    for name, seconds in live.failed_for_s.items():
        if name in body["backends"]:
            body["backends"][name]["failed_for_s"] = round(seconds, 1)
    if not _detail_allowed(request):
        body = {"status": body["status"]}
    unready = bool(report.not_ready)
    return Response(orjson.dumps(body), status_code=503 if unready else 200, media_type="application/json",
                    headers={"Retry-After": "2"} if unready else {})


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format. Breaker, health and queue gauges are read from the live runtime now.
    With keys on, it needs the admin key unless `server.public_metrics` (a scraper can send a bearer token)."""
    if request.app.state.services.auth.enabled and not request.app.server_public("metrics"):
        require_admin(request)

    runtime = request.app.state.manager.current
    metrics.refresh_gauges(runtime)
    body, content_type = metrics.exposition(runtime)
    return Response(body, media_type=content_type)


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> Response:
    """The API's OpenAPI document. It lists the admin API too, so with keys on it needs the admin key,
    unless `server.public_openapi`."""
    if request.app.state.services.auth.enabled and not request.app.server_public("openapi"):
        require_admin(request)
    return Response(orjson.dumps(request.app.openapi()), media_type="application/json")
