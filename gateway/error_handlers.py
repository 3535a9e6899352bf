"""Every exception becomes an OpenAI error body; registered once, in one place."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from backends.contract.errors import GatewayError, InvalidRequest
from gateway.disconnect import ClientDisconnected

log = logging.getLogger("llm_gateway")

_HTTP_TYPES = {404: ("invalid_request_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def error_response(exc: GatewayError) -> Response:
    return Response(exc.to_json(), status_code=exc.status_code, media_type="application/json", headers=exc.headers)


def gateway_error_response(request: Request, exc: GatewayError) -> Response:
    if exc.status_code >= 500:
        log.warning("request %s failed: %s %s", getattr(request.state, "request_id", "-"), exc.status_code, exc.message)
    return error_response(exc)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return gateway_error_response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    etype, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", None))
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    else:
        message = str(exc.detail)
    err = GatewayError(message, status_code=exc.status_code, error_type=etype, code=code)
    return error_response(err)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(InvalidRequest(f"Invalid request: {first.get('msg', 'validation failed')}.", param=param))


def client_gone_response() -> Response:
    # Nobody is listening; 499 is nginx's "client closed request", for the logs only.
    return Response(status_code=499)


async def _client_gone(request: Request, exc: Exception) -> Response:
    return client_gone_response()


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnected, _client_gone)
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
