"""What every model endpoint does around its own work: one metrics update and one log line per request,
errors included, and body errors shown only to callers who may call."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.protocol import parse_request
from gateway.disconnect import ClientDisconnected
from gateway.observe import RequestRecord, finish


async def observed(request: Request | str, endpoint: str, run: Callable[[RequestRecord], Awaitable[Response]],
                   batch: str | None = None, transport: str = "http") -> Response:
    """`run(rec)` under a request record that is finished exactly once: now, or when its stream ends.
    `request`: the HTTP request, or the id of one that has none (a batch line, with its `batch`; a gRPC
    call, with its `transport`)."""
    rec = RequestRecord(request if isinstance(request, str) else request.state.request_id, endpoint, batch=batch,
                        transport=transport)
    rec.begin()
    try:
        response = await run(rec)
    except BaseException as exc:
        rec.status, rec.error_code = failure(exc)
        finish(rec)
        raise
    if not rec.deferred:
        finish(rec)
    return response


async def parse_for_caller(request: Request, kind: type[Any]) -> Any:
    """The validated body. An invalid one is reported only to a caller who may call: anonymous callers
    of a gateway with keys get the 401 first, and learn nothing of the API's field names. (A valid body
    is authenticated in the pipeline, in the same Redis round trip as its cache entry.)"""
    try:
        return parse_request(await request.body(), kind, request.app.max_json_depth)
    except GatewayError:
        await request.app.state.services.auth.authenticate(request.headers)
        raise


def failure(exc: BaseException) -> tuple[int, str | None]:
    """(status, error code) of a request that ended in `exc`, for its metrics and log line."""
    if isinstance(exc, GatewayError):
        return exc.status_code, exc.code or exc.error_type
    if isinstance(exc, ClientDisconnected):
        return 499, "client_disconnected"
    return 500, "internal_error"
