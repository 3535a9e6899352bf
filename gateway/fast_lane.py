"""The hot POST endpoints, dispatched before FastAPI's router and middleware stack.

Chat and completions requests are most of the traffic. They parse their own
bodies and map their own errors, so FastAPI's exception, exit-stack and
routing layers only add cost there: the fast lane calls the handler directly
and answers errors exactly as the registered handlers would. Everything else
(GETs, admin, unknown paths, wrong methods) goes through the full app.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from backends.contract.errors import GatewayError
from gateway.disconnect import ClientDisconnected
from gateway.error_handlers import client_gone_response, gateway_error_response

Handler = Callable[[Request], Awaitable[Response]]


class FastLane:
    def __init__(self, app: ASGIApp, handlers: Mapping[str, Handler]) -> None:
        self.app = app
        self.handlers = dict(handlers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = gateway_error_response(request, exc)
        except ClientDisconnected:
            response = client_gone_response()
        await response(scope, receive, send)
