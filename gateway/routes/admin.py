"""The admin API: reload the config, show it (secrets masked), show deployments.

Protected by the admin key (`LLM_GATEWAY_ADMIN_KEY`) or the master key
(`LLM_GATEWAY_MASTER_KEY`) from the environment, sent as `Authorization:
Bearer <key>`. With neither set the admin API is off: every call gets 403.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import GatewayError
from gateway.settings import ENV_ADMIN_KEY, ENV_MASTER_KEY
from routing.config_env import is_reference

router = APIRouter(prefix="/admin")

_SECRET_NAMES = re.compile(r"(key|token|secret|password)", re.I)


def is_admin(request: Request) -> bool:
    try:
        require_admin(request)
    except GatewayError:
        return False
    return True


def require_admin(request: Request) -> None:
    """The admin key, or the master key, as a bearer token."""
    accepted = request.app.state.services.settings.admin_keys
    if not accepted:
        raise GatewayError(f"The admin API is disabled; set {ENV_ADMIN_KEY} (or {ENV_MASTER_KEY}) to enable it.",
                           status_code=403, error_type="permission_error", code="admin_disabled")
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in accepted):
        raise GatewayError("Invalid admin key.", status_code=401, error_type="invalid_request_error",
                           code="invalid_api_key")


_URL_PASSWORD = re.compile(r"(?i)^([a-z][a-z0-9+.\-]*://[^/@:]*:)[^/@]+@")


def mask_secrets(value: Any, key: str = "") -> Any:
    """Keep `${ENV}` references (they name a secret, they are not one); mask any literal secret: values of
    secret-sounding fields, every value of upstream `headers` (any of them may be a credential), and the
    password of any URL, whatever its field is called."""
    if isinstance(value, dict):
        if key == "headers":
            return {k: v if is_reference(v) else "***" for k, v in value.items()}
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str) and not is_reference(value):
        if _SECRET_NAMES.search(key):
            return "***"
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@router.post("/reload")
async def reload(request: Request) -> Response:
    require_admin(request)
    result = await request.app.state.manager.reload()
    return _json(result, 200 if result["ok"] else 400)


@router.get("/config")
async def show_config(request: Request) -> Response:
    require_admin(request)
    manager = request.app.state.manager
    runtime = manager.current
    return _json({
        "version": runtime.version,
        "source": manager.config_path,
        "config": mask_secrets(runtime.config.model_dump(mode="json")),
        "last_reload": manager.last_reload,
    })


@router.get("/deployments")
async def deployments(request: Request) -> Response:
    require_admin(request)
    runtime = request.app.state.manager.current
    return _json({"version": runtime.version,
                  "deployments": {name: dep.snapshot() for name, dep in runtime.deployments.items()}})
