"""One error type for the whole gateway, rendered in OpenAI's wire shape.

Every failure the client can see is a `GatewayError`: handlers raise it and a
single exception handler renders it, so no code path builds error JSON by hand
and no stack trace ever reaches the wire.
"""

from __future__ import annotations

from typing import Any

import orjson


class GatewayError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    # Would another attempt (on this or another deployment) plausibly succeed?
    retryable: bool = False
    # Seconds the failing side asked us to wait (Retry-After), if it said.
    retry_after: float | None = None
    # Should the deployment's circuit breaker count this? Not when the gateway already knows the
    # deployment's real state (a local engine that is loading or being restarted by its supervisor):
    # one crash would otherwise count once per request it held and keep the breaker open long after
    # the engine is back.
    counts_against_breaker: bool = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())


class InvalidRequest(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
        )


class PayloadTooLarge(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    """The client was too slow sending its request; the connection is closed (the rest is not read)."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


class Overloaded(GatewayError):
    """The model is busy; the client should come back after `retry_after` seconds."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "model_overloaded"

    retryable = True

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after))), "retry-after-ms": str(int(retry_after * 1000))}
        super().__init__(message, headers=headers, **kw)
        self.retry_after = retry_after


class NotReady(GatewayError):
    """A local model is loading, or its engine is being restarted."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "model_not_ready"
    retryable = True
    counts_against_breaker = False

    def __init__(self, message: str, *, retry_after: float = 2.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after)))})
        self.retry_after = retry_after


class EngineUnavailable(NotReady):
    """A local engine process died with the request in it; its supervisor is restarting it."""

    code = "engine_unavailable"


class UpstreamTimeout(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    code = "timeout"
    retryable = True


class FirstTokenTimeout(UpstreamTimeout):
    """A stream's first content did not come within `first_token_s` (headers and a role chunk do not count)."""

    code = "first_token_timeout"


class StreamIdleTimeout(UpstreamTimeout):
    """A stream went quiet for longer than `idle_s` between two chunks."""

    code = "stream_idle_timeout"


class UpstreamUnavailable(GatewayError):
    """Could not reach the upstream, or it dropped the connection."""

    status_code = 502
    error_type = "service_unavailable_error"
    code = "upstream_unavailable"
    retryable = True


class UpstreamError(GatewayError):
    """An upstream answered with an error; normalised to OpenAI's shape by the backend.

    4xx client errors are passed back as they are and never retried; 408, 409,
    429, 5xx and Anthropic's 529 are retried elsewhere.
    """

    RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})

    def __init__(self, message: str, *, status_code: int, error_type: str | None = None, code: str | None = None,
                 param: str | None = None, retry_after: float | None = None) -> None:
        wire_status = 503 if status_code == 529 else status_code
        if status_code in (401, 403):
            # The gateway's own credentials for this upstream were refused: the client did nothing wrong,
            # and another deployment may well work.
            wire_status, error_type, code = 502, "server_error", "upstream_auth_failed"
            message = "The gateway's credentials for an upstream were refused."
        headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after else None
        super().__init__(message, status_code=wire_status, error_type=error_type or _type_for(wire_status),
                         code=code, param=param, headers=headers)
        self.upstream_status = status_code
        self.retryable = status_code in self.RETRY_STATUSES or status_code >= 500 or status_code in (401, 403)
        self.retry_after = retry_after


class StreamInterrupted(GatewayError):
    """A stream broke after content was sent: reset, timeout, in-band error, or no [DONE]."""

    status_code = 502
    error_type = "server_error"
    code = "stream_interrupted"
    retryable = True


class AllDeploymentsFailed(GatewayError):
    status_code = 503
    error_type = "service_unavailable_error"
    code = "all_deployments_failed"
    retryable = True  # for the last resort and a stale cache entry: nothing was wrong with the request


def _type_for(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class EngineError(GatewayError):
    """The engine failed on a request that was valid; the message is safe to show."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


def internal_error() -> GatewayError:
    return GatewayError("The server had an error while processing your request.", code="internal_error")
