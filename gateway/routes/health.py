"""Liveness and readiness.

`/health` answers as long as the process serves HTTP and touches nothing.
`/ready` is 200 only when every required local model is loaded and warmed up,
and every route without a last resort has at least one healthy deployment
(as the background health checks last saw it).
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import metrics
from gateway.routes.admin import is_admin, require_admin

router = APIRouter()

_HEALTH = orjson.dumps({"status": "ok"})


@router.head("/health", include_in_schema=False)
async def health_head() -> Response:
    return Response(_HEALTH, media_type="application/json")


@router.get("/health")
async def health() -> Response:
    return Response(_HEALTH, media_type="application/json")


@router.get("/ready")
async def ready(request: Request) -> Response:
    runtime = request.app.state.manager.current
    backends = {}
    not_ready = []
    for backend in runtime.local_backends():
        status = backend.status()
        backends[backend.name] = status.as_dict()
        if status.required and status.state != "ready":
            not_ready.append(backend.name)
    deployments = {}
    scheduling = {}  # every deployment with a capacity: its slots in service and its queue, per class
    for dep in runtime.deployments.values():
        if dep.config.provider != "local":
            deployments[dep.name] = {"kind": dep.backend.kind, "healthy": dep.healthy, "breaker": dep.breaker.state}
        if dep.scheduler.limited:
            scheduling[dep.name] = dep.scheduler.snapshot()
    routes = {}
    for route in runtime.route_list:
        usable = sum(1 for d in route.deployments if d.healthy and d.backend.status().state == "ready")
        routes[route.name] = {"usable_deployments": usable, "deployments": len(route.deployments)}
        if usable == 0 and route.config.last_resort is None and route.name not in not_ready:
            if not all(d.config.provider == "local" for d in route.deployments):
                not_ready.append(f"route:{route.name}")
    # Redis only degrades the gateway (cache and limits fail open); it never makes it unready.
    redis = request.app.state.services.link.status()
    body = {"status": "ready" if not not_ready else "not_ready", "not_ready": not_ready, "backends": backends,
            "deployments": deployments, "scheduling": scheduling, "routes": routes, "redis": redis,
            "config_version": runtime.version}
    headers = {} if not not_ready else {"Retry-After": "2"}
    if request.app.state.services.auth.enabled and not is_admin(request):
        # Probes need the status code; the names of models, deployments and engines are for the admin.
        body = {"status": body["status"]}
    return Response(orjson.dumps(body), status_code=200 if not not_ready else 503,
                    media_type="application/json", headers=headers)


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
