"""GatewayError -> gRPC status, as Google's API design guide (AIP-193) maps HTTP codes, with its details.

A failed call carries, besides its code:
- the status message: the OpenAI error's message;
- `grpc-status-details-bin`, a google.rpc.Status whose details are an ErrorInfo (reason: the OpenAI code
  in upper case; metadata: the OpenAI `type`, `code`, `param` and the HTTP status), a RetryInfo when the
  gateway would send `Retry-After`, a BadRequest naming the field of an invalid request, and a RequestInfo
  with the request id (grpc_status.rpc_status.from_call reads them);
- `x-openai-error`, the OpenAI error body as JSON, for a caller that handles both APIs alike.
Never a stack trace: an unexpected exception is an INTERNAL with a fixed body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from backends.contract.errors import GatewayError
from backends.http import parse_retry_after

# grpc.StatusCode names, looked up on the grpc module only when a server runs (grpc stays optional).
BY_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           409: "ABORTED", 413: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           499: "CANCELLED", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# 502 is the gateway's "the upstream failed" (unreachable, a broken stream, an upstream 5xx passed on):
# like 503, worth a retry, and gRPC clients (their retry policies, grpc's own HTTP mapping) retry UNAVAILABLE.
DOMAIN = "llm_gateway.v1"  # ErrorInfo.domain: who defines the reasons
_NOT_REASON = re.compile(r"[^A-Z0-9]+")


def status_name(http_status: int) -> str:
    """The gRPC status code's name for an HTTP status: other 4xx FAILED_PRECONDITION, other 5xx INTERNAL."""
    if http_status in BY_HTTP:
        return BY_HTTP[http_status]
    return "FAILED_PRECONDITION" if 400 <= http_status < 500 else "INTERNAL"


INTERNAL_BODY: dict[str, Any] = {"error": {"message": "The gateway failed on this request.", "type": "server_error",
                                           "param": None, "code": "internal_error"}}


@dataclass(frozen=True)
class Failure:
    """What a failed call tells its caller."""

    code: str  # a grpc.StatusCode name
    http_status: int
    body: dict[str, Any]  # OpenAI's {"error": {...}}
    retry_after_s: float | None

    @property
    def message(self) -> str:
        return str(self.body["error"].get("message") or "")

    @property
    def openai_json(self) -> bytes:
        return orjson.dumps(self.body)


def describe(exc: BaseException) -> Failure:
    """The failure for an exception a call ended in."""
    if not isinstance(exc, GatewayError):
        return Failure("INTERNAL", 500, INTERNAL_BODY, None)
    retry = exc.retry_after if exc.retry_after is not None else parse_retry_after(exc.headers)
    return Failure(status_name(exc.status_code), exc.status_code, exc.body(), retry)


def reason(err: dict[str, Any]) -> str:
    """ErrorInfo.reason: UPPER_SNAKE_CASE of the OpenAI code (else its type), as AIP-193 asks."""
    raw = str(err.get("code") or err.get("type") or "error").upper()
    return _NOT_REASON.sub("_", raw).strip("_") or "ERROR"


def status_details(failure: Failure, code_value: int, request_id: str) -> bytes:
    """The serialized google.rpc.Status for `grpc-status-details-bin` (googleapis-common-protos)."""
    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    err = failure.body["error"]
    metadata = {k: str(err[k]) for k in ("type", "code", "param") if err.get(k) is not None}
    metadata["http_status"] = str(failure.http_status)
    details = [error_details_pb2.ErrorInfo(reason=reason(err), domain=DOMAIN, metadata=metadata)]
    if failure.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(failure.retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if failure.code == "INVALID_ARGUMENT" and err.get("param"):
        violation = error_details_pb2.BadRequest.FieldViolation(field=str(err["param"]), description=failure.message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    details.append(error_details_pb2.RequestInfo(request_id=request_id))
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code_value, message=failure.message, details=packed).SerializeToString()
