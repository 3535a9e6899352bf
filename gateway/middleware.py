"""Pure-ASGI middleware for the two things every request needs: an id and a size limit.

Written against raw ASGI (not BaseHTTPMiddleware) so streaming responses
pass straight through and the hot path pays one function call.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.aio import within
from backends.contract.errors import GatewayError, PayloadTooLarge, RequestTimeout, internal_error
from gateway.exposure import Exposure
from gateway.surfaces.messages.translate import error_body as anthropic_error_body

MESSAGES_PREFIX = "/v1/messages"  # Anthropic's API: its errors in Anthropic's shape

log = logging.getLogger("llm_gateway")

VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")  # a caller's x-request-id we keep (HTTP and gRPC)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float = 60.0,
                 body_idle_timeout_s: float = 15.0, exposure: Exposure | None = None,
                 upload_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_limits = upload_limits or {}  # paths that take files: their own body limit
        self.body_timeout_s = body_timeout_s
        self.body_idle_timeout_s = body_idle_timeout_s
        self.exposure = exposure  # the checks of requests while the gateway has no keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        length = host = content_type = None
        keyed = False
        for key, value in scope["headers"]:
            if key == b"x-request-id" and VALID_REQUEST_ID.match(value):
                rid = value
            elif key == b"content-length":
                length = value
            elif key == b"host":
                host = value
            elif key == b"content-type":
                content_type = value
            elif key == b"authorization" or key == b"x-api-key":
                keyed = True
        rid = rid or uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = rid.decode()

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        if self.exposure is not None:  # set only while the gateway has no keys
            refused = self.exposure.refusal(scope["method"], scope["path"], host, content_type, keyed)
            if refused is not None:
                await _send_error(send_with_id, refused, scope["path"])
                return
        limit = self.upload_limits.get(scope["path"], self.max_body_bytes) if self.upload_limits else self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            await _send_error(send_with_id, _too_large(limit), scope["path"])
            return

        received = 0
        body_done = False
        deadline = 0.0

        async def limited_receive() -> Message:
            """The body, within its size limit and its deadlines (a client that sends less than its
            Content-Length, or trickles it, gets a 408). Once the body is in, `receive` only waits for the
            client to leave, which may take as long as the answer: no deadline then."""
            nonlocal received, body_done, deadline
            if body_done:
                return await receive()
            now = time.monotonic()
            if not deadline:
                deadline = now + self.body_timeout_s
            try:
                message = await within(receive(), min(self.body_idle_timeout_s, max(0.0, deadline - now)))
            except asyncio.TimeoutError:
                raise RequestTimeout("The request body did not arrive in time.") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception:
            # Last line of defence: log the trace, send a bare OpenAI 500, never the trace itself.
            log.exception("unhandled error in request %s", rid.decode())
            if started:
                raise
            await _send_error(send_with_id, internal_error(), scope["path"])


async def _send_error(send: Send, exc: GatewayError, path: str) -> None:
    """The error in the shape of the API the path belongs to (Anthropic's for the Messages API)."""
    body = orjson.dumps(anthropic_error_body(exc)) if path.startswith(MESSAGES_PREFIX) else exc.to_json()
    await send({
        "type": "http.response.start",
        "status": exc.status_code,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })
    await send({"type": "http.response.body", "body": body})
