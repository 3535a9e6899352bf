"""Pure-ASGI middleware for the two things every request needs: an id and a size limit.

Written against raw ASGI (not BaseHTTPMiddleware) so streaming responses
pass straight through and the hot path pays one function call.
"""

from __future__ import annotations

import logging
import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, PayloadTooLarge, internal_error

log = logging.getLogger("llm_gateway")

_VALID_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        length = None
        for key, value in scope["headers"]:
            if key == b"x-request-id" and _VALID_ID.match(value):
                rid = value
            elif key == b"content-length":
                length = value
        rid = rid or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        limit = self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send_with_id, _too_large(limit))
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception:
            # Last line of defence: log the trace, send a bare OpenAI 500, never the trace itself.
            log.exception("unhandled error in request %s", rid.decode())
            if started:
                raise
            await _send_error(send_with_id, internal_error())


async def _send_error(send: Send, exc: GatewayError) -> None:
    body = exc.to_json()
    await send({
        "type": "http.response.start",
        "status": exc.status_code,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
