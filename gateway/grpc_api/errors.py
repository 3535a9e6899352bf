"""GatewayError -> gRPC status, as Google's API design guide maps HTTP codes; the OpenAI error body goes
along in the trailing metadata (`x-openai-error`) and the status message. Never a stack trace."""

from __future__ import annotations

from typing import Any

import orjson

from backends.contract.errors import GatewayError

# grpc.StatusCode names, looked up on the grpc module only when a server runs (grpc stays optional).
BY_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           499: "CANCELLED", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def status_name(http_status: int) -> str:
    """The gRPC status code's name for an HTTP status: other 4xx FAILED_PRECONDITION, other 5xx INTERNAL."""
    if http_status in BY_HTTP:
        return BY_HTTP[http_status]
    return "FAILED_PRECONDITION" if 400 <= http_status < 500 else "INTERNAL"


INTERNAL_BODY: dict[str, Any] = {"error": {"message": "The gateway failed on this request.", "type": "server_error",
                                           "param": None, "code": "internal_error"}}


def describe(exc: BaseException) -> tuple[str, bytes, str]:
    """(status code name, OpenAI error JSON, status message) for an exception a call ended in."""
    if isinstance(exc, GatewayError):
        body, status = exc.body(), exc.status_code
    else:
        body, status = INTERNAL_BODY, 500
    raw = orjson.dumps(body)
    return status_name(status), raw, raw.decode()
