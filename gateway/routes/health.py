"""Liveness and readiness.

`/health` answers as long as the process serves HTTP and touches nothing.
`/ready` is 200 only when every required backend is loaded and warmed up.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

router = APIRouter()

_HEALTH = orjson.dumps({"status": "ok"})


@router.get("/health", include_in_schema=True)
async def health() -> Response:
    return Response(_HEALTH, media_type="application/json")


@router.get("/ready")
async def ready(request: Request) -> Response:
    registry = request.app.state.registry
    backends = {}
    not_ready = []
    for backend in registry.backends:
        status = backend.status()
        backends[backend.name] = status.as_dict()
        if status.required and status.state != "ready":
            not_ready.append(backend.name)
    body = {"status": "ready" if not not_ready else "not_ready", "not_ready": not_ready, "backends": backends}
    headers = {} if not not_ready else {"Retry-After": "2"}
    return Response(orjson.dumps(body), status_code=200 if not not_ready else 503,
                    media_type="application/json", headers=headers)
