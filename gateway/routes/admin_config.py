"""The admin API's config routes: show the config (secrets masked, and the file's text for an editor), validate
a config text, and reload: the file, or a text sent, applied and written to the file (routing/manager.py).

Every applied or refused text is logged with its size, its digest and which key sent it, never its content
(it may hold secrets in URLs or headers)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import GatewayError, InvalidRequest
from gateway.routes.admin import require_admin
from routing.config import ConfigError
from routing.config_file import read_config_text
from routing.config_mask import mask_secrets, masked_text
from routing.config_write import NotWritable, target

router = APIRouter(prefix="/admin")
log = logging.getLogger("llm_gateway")

# The media types a config text may be sent as (a form's urlencoded body is not one: nor is JSON, which
# POST /admin/reload has always ignored: an empty or JSON body reloads the file, as before).
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"})


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _who(request: Request) -> str:
    """Which key an admin call came with, for the audit line (never the key)."""
    master = request.app.state.services.settings.master_key
    given = request.headers.get("authorization", "")[7:].strip()
    return "the master key" if master and hmac.compare_digest(given.encode(), master.encode()) else "the admin key"


async def _config_text(request: Request) -> str | None:
    """The config text a request sends (YAML), or None when it sends none (an empty or a JSON body)."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not raw.strip() or kind == "application/json":
        return None
    if kind not in YAML_TYPES:
        raise GatewayError("Send the config as YAML text, with 'Content-Type: application/yaml'.", status_code=415,
                           error_type="invalid_request_error", code="unsupported_media_type")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The config text is not UTF-8.") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@router.post("/reload")
async def reload(request: Request) -> Response:
    """No body: reload the config file. A YAML body: apply that text (validated as the file would be, then
    written to the config file and swapped in); 409 when there is no config file the gateway may write."""
    require_admin(request)
    text = await _config_text(request)
    manager = request.app.state.manager
    if text is None:
        return _answer(await manager.reload())
    try:
        result = await manager.apply(text)
    except NotWritable as exc:
        log.warning("admin: config apply by %s refused: %s", _who(request), exc)
        raise GatewayError(f"The config cannot be applied here: {exc}.", status_code=409,
                           error_type="invalid_request_error", code="config_not_writable") from None
    outcome = f"applied as version {result['version']}" if result["ok"] else \
        f"refused ({len(result['problems'])} problem(s))"
    log.warning("admin: config text (%d bytes, sha256 %s) sent by %s: %s", len(text), _digest(text), _who(request),
                outcome)
    return _answer(result)


def _answer(result: dict[str, Any]) -> Response:
    """The reload's result; a refusal is a 400 whose body is an OpenAI error too (its `error`), besides the
    result's own fields (`ok`, `version`, `problems`) that callers of the reload have always read."""
    if result["ok"]:
        return _json(result)
    problems = result["problems"]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    error = InvalidRequest(f"The config was refused; version {result['version']} keeps serving: "
                           f"{problems[0] if problems else 'invalid'}{more}", code="config_invalid")
    return _json({**error.body(), **result}, 400)


@router.post("/config/validate")
async def validate_config(request: Request) -> Response:
    """The problems of a config text (YAML body), as `llm-gateway check` and a reload would find them."""
    require_admin(request)
    text = await _config_text(request)
    if text is None:
        raise InvalidRequest("Send the config's YAML text as the body, with 'Content-Type: application/yaml'.")
    return _json(await request.app.state.manager.validate(text))


async def _editable_text(path: str | None) -> tuple[str | None, str | None]:
    """(the config file's text with its secrets masked, why it cannot be applied to: None if it can)."""
    text = None
    if path:
        try:
            text = masked_text(await asyncio.to_thread(read_config_text, path))
        except (ConfigError, yaml.YAMLError):  # unreadable, not UTF-8, not YAML: the editor starts empty
            text = None
    return text, _not_writable(path)


def _not_writable(path: str | None) -> str | None:
    try:
        target(path)
    except NotWritable as exc:
        return str(exc)
    return None


@router.get("/config")
async def show_config(request: Request) -> Response:
    require_admin(request)
    manager = request.app.state.manager
    runtime = manager.current
    text, read_only = await _editable_text(manager.config_path)
    return _json({
        "version": runtime.version,
        "source": manager.config_path,
        "config": mask_secrets(runtime.config.model_dump(mode="json")),
        "text": text,  # the file as it is now, secrets masked (None: no file, or one that does not parse)
        "writable": read_only is None,
        "read_only_reason": read_only,
        "last_reload": manager.last_reload,
    })
