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


class Overloaded(GatewayError):
    """The model is busy; the client should come back after `retry_after` seconds."""

    status_code = 503
    error_type = "service_unavailable_error"
    code = "model_overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, round(retry_after))), "retry-after-ms": str(int(retry_after * 1000))}
        super().__init__(message, headers=headers, **kw)


class NotReady(GatewayError):
    status_code = 503
    error_type = "service_unavailable_error"
    code = "model_not_ready"

    def __init__(self, message: str, *, retry_after: float = 2.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after)))})


class UpstreamTimeout(GatewayError):
    status_code = 504
    error_type = "timeout_error"
    code = "timeout"


class EngineError(GatewayError):
    """The engine failed on a request that was valid; the message is safe to show."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


def internal_error() -> GatewayError:
    return GatewayError("The server had an error while processing your request.", code="internal_error")
