"""CORS for browser clients (`server.cors`): Starlette's CORSMiddleware, outside everything else.

It wraps the whole stack (request context, fast lane, FastAPI), and only when configured: with no `cors`
section the app has no CORS layer at all, so the default costs nothing. Being outermost, it answers a
preflight `OPTIONS` itself, before authentication, rate limits, metrics and the request log (a preflight
carries no key and is no request), and it adds its headers to every answer, the gateway's own errors
(413, 408, 403 host_not_allowed) included, so a page can read those too.

Two changes to Starlette's behaviour: a refused preflight is OpenAI's error shape (like every other error
of the gateway), and a request from an origin that is not allowed gets no CORS header at all (Starlette
would still send `Access-Control-Expose-Headers`; a refused preflight would keep the allowed methods and
headers); only `Vary: Origin`, so caches keep the two apart.
"""

from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backends.contract.errors import GatewayError
from routing.config import CorsConfig


class GatewayCORS(CORSMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-origin request (SDKs, curl, server to server)
            await self.app(scope, receive, send)
        elif scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight_response(request_headers=headers)(scope, receive, send)
        elif self.is_allowed_origin(origin):
            await self.simple_response(scope, receive, send, request_headers=headers)
        else:
            async def vary(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message.setdefault("headers", [])
                    out = MutableHeaders(scope=message)
                    out["Vary"] = ", ".join([*out.getlist("Vary"), "Origin"])
                await send(message)

            await self.app(scope, receive, vary)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        what = answer.body.decode().removeprefix("Disallowed CORS ")  # "origin, headers", as Starlette found
        error = GatewayError(f"CORS preflight refused: this {what} is not allowed (server.cors).",
                             status_code=400, error_type="invalid_request_error", code="cors_not_allowed")
        # No access-control header: nothing in a refusal should read as a permission.
        return Response(error.to_json(), status_code=400, headers={"Vary": answer.headers["vary"]},
                        media_type="application/json")


_SAFELISTED = {"accept", "accept-language", "content-language", "content-type"}  # Starlette always allows these


def with_cors(app: ASGIApp, cors: CorsConfig | None) -> ASGIApp:
    """`app` behind the CORS layer `cors` describes; `app` itself when there is none (the default)."""
    if cors is None:
        return app
    return GatewayCORS(app, allow_origins=cors.allow_origins, allow_origin_regex=cors.allow_origin_regex,
                       allow_credentials=cors.allow_credentials, allow_methods=[m.upper() for m in cors.allow_methods],
                       allow_headers=[h for h in cors.allow_headers if h.lower() not in _SAFELISTED],
                       expose_headers=cors.expose_headers, max_age=cors.max_age,
                       allow_private_network=cors.allow_private_network)
