"""Deadlines for slow clients and a cap on connections, at the HTTP protocol level.

uvicorn closes a keep-alive connection that idles after a response, but it
waits forever for a connection that never sends anything, trickles its
headers, or sends less body than its Content-Length says: with no key
needed, anyone could hold connections (and file descriptors) open. This is
uvicorn's own HTTP protocol class with three additions:

- **headers**: from the first byte of a request (or from the connection's
  start) to the end of its headers, at most `header_timeout_s`; then a 408
  and the connection is closed;
- **connections**: beyond `max_connections` open at once, a new one gets a
  503 with `Retry-After` and is closed at once;
- the **body** deadline lives in the ASGI middleware (`RequestContextMiddleware`),
  which sees each body chunk arrive.

None of them touches a response in progress: a stream that runs for minutes
is never cut. The limits come from `server:` in the config (`configure`,
called by the app factory in every worker before it serves).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

try:  # the same implementation uvicorn's "auto" would pick
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]

log = logging.getLogger("llm_gateway")


class Limits:
    header_timeout_s: float = 10.0
    max_connections: int = 2048


def configure(header_timeout_s: float, max_connections: int) -> None:
    Limits.header_timeout_s = header_timeout_s
    Limits.max_connections = max_connections


def _response(status: int, reason: str, error_type: str, code: str, message: str,
              extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
            "connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


HEADER_TIMEOUT = _response(408, "Request Timeout", "invalid_request_error", "request_timeout",
                           "The request's headers did not arrive in time.")
TOO_MANY = _response(503, "Service Unavailable", "service_unavailable_error", "too_many_connections",
                     "The server has too many open connections; retry shortly.", (("retry-after", "1"),))
_WARN_EVERY_S = 10.0


class GuardedHTTP(_Base):  # type: ignore[misc, valid-type]
    _last_warning = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: Any = None
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:  # started once a request's headers are in
            self._disarm()
            await inner(scope, receive, send)

        self.app = app

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > Limits.max_connections:
            now = time.monotonic()
            if now - GuardedHTTP._last_warning > _WARN_EVERY_S:
                GuardedHTTP._last_warning = now
                log.warning("more than %d connections open; refusing new ones (server.max_connections)",
                            Limits.max_connections)
            transport.write(TOO_MANY)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._between_requests():
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _between_requests(self) -> bool:
        cycle = self.cycle
        return cycle is None or cycle.response_complete

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(Limits.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if not self._between_requests():  # a response is running (pipelining): never cut it
            return
        self.transport.write(HEADER_TIMEOUT)
        self.transport.close()
