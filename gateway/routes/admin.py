"""The admin API's key check, and its deployments view: deployments, routes, engines, the last reload.
(The config's routes are in admin_config.py; keys and usage in admin_keys.py; cost in admin_cost.py.)

Protected by the admin key (`LLM_GATEWAY_ADMIN_KEY`) or the master key
(`LLM_GATEWAY_MASTER_KEY`) from the environment, sent as `Authorization:
Bearer <key>`. With neither set the admin API is off: every call gets 403.
A change sent by a web page of another site is refused (gateway/cross_site.py).
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import GatewayError
from gateway.cross_site import cross_site_refusal
from gateway.settings import ENV_ADMIN_KEY, ENV_MASTER_KEY
from routing.config_mask import mask_secrets

__all__ = ["is_admin", "mask_secrets", "require_admin", "router"]  # mask_secrets: where it has always been

router = APIRouter(prefix="/admin")


def is_admin(request: Request) -> bool:
    try:
        require_admin(request)
    except GatewayError:
        return False
    return True


def require_admin(request: Request) -> None:
    """The admin key, or the master key, as a bearer token; a change not sent from another site's page."""
    refused = cross_site_refusal(request.method, request.headers, getattr(request.app.server_config, "cors", None))
    if refused is not None:
        raise refused
    accepted = request.app.state.services.settings.admin_keys
    if not accepted:
        raise GatewayError(f"The admin API is disabled; set {ENV_ADMIN_KEY} (or {ENV_MASTER_KEY}) to enable it.",
                           status_code=403, error_type="permission_error", code="admin_disabled")
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in accepted):
        raise GatewayError("Invalid admin key.", status_code=401, error_type="invalid_request_error",
                           code="invalid_api_key")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.get("/deployments")
async def deployments(request: Request) -> Response:
    """Every deployment's health, breaker, load and latency; every route's deployments and how many are usable;
    the local engines' state and queues; the last reload's result. What the console's health page polls."""
    require_admin(request)
    manager = request.app.state.manager
    runtime = manager.current
    return _json({"version": runtime.version,
                  "deployments": {name: dep.snapshot() for name, dep in runtime.deployments.items()},
                  "routes": {route.name: _route(route) for route in runtime.route_list},
                  "engines": {b.name: b.status().as_dict() for b in runtime.local_backends()},
                  "last_reload": manager.last_reload})


def _route(route: Any) -> dict[str, Any]:
    """A route's deployments in order, and how many could take a request now (as /ready counts them)."""
    usable = sum(1 for d in route.deployments if d.healthy and d.backend.status().state == "ready")
    return {"deployments": [d.name for d in route.deployments], "strategy": route.config.strategy,
            "aliases": list(route.config.aliases), "implicit": route.implicit, "usable_deployments": usable}
