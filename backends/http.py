"""Shared plumbing for HTTP upstreams: one pooled aiohttp session per upstream, and SSE framing.

aiohttp rather than httpx, by measurement: ../shared/bench/README.md shows a
thin proxy on aiohttp serving ~3,750 req/s at 32 connections where httpx's
pool (which scans every connection per request) managed ~700.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import AsyncIterator

import aiohttp

from backends.contract.errors import GatewayError, StreamInterrupted, UpstreamTimeout, UpstreamUnavailable


@dataclass(frozen=True)
class PoolSettings:
    max_connections: int = 256
    keepalive_s: float = 30.0
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0


class UpstreamPool:
    """One aiohttp session (connection pool) for one upstream base URL."""

    def __init__(self, settings: PoolSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.settings.max_connections,
                                             keepalive_timeout=self.settings.keepalive_s, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  json_serialize=None, skip_auto_headers=("User-Agent",))
        return self._session

    def timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=connect or self.settings.connect_timeout_s,
                                     connect=connect or self.settings.connect_timeout_s,
                                     sock_read=read or self.settings.read_timeout_s)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def parse_retry_after(headers: "aiohttp.typedefs.LooseHeaders | dict[str, str]") -> float | None:
    """`retry-after-ms`, then `Retry-After` in seconds or as an HTTP date."""
    get = headers.get  # type: ignore[union-attr]
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("Retry-After") or get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            import time

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def transport_error(exc: BaseException, upstream: str, *, started: bool = False) -> GatewayError:
    """Map aiohttp/asyncio failures to the gateway's retryable errors (message safe to show)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(f"The upstream '{upstream}' timed out.")
    if started:
        return StreamInterrupted(f"The stream from '{upstream}' broke off before it was complete.")
    return UpstreamUnavailable(f"Could not get an answer from the upstream '{upstream}'.")


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Split a response body into complete SSE events, each returned with its `\\n\\n` terminator."""
    async for batch in sse_batches(content):
        for event in batch:
            yield event


async def sse_batches(content: aiohttp.StreamReader) -> AsyncIterator[list[bytes]]:
    """The complete SSE events of each network read, together (so they can be relayed in one write).

    Bytes are not decoded or re-encoded. The SSE spec ends a line with CRLF, LF or a bare CR; all three are
    normalised to LF (a JSON payload holds no raw CR). A CR that ends a read is held back until the next
    read says whether an LF follows it, so a CRLF split across two reads is one line end, not two.
    """
    buf = b""
    held_cr = False
    async for data in content.iter_any():
        if held_cr:
            data, held_cr = b"\r" + data, False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, held_cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf += data
        if b"\n\n" not in buf:
            continue
        parts = buf.split(b"\n\n")
        buf = parts.pop()  # what follows the last terminator: an incomplete event, or b""
        batch = [part + b"\n\n" for part in parts if part.strip()]
        if batch:
            yield batch
    if held_cr:
        buf += b"\n"
    # What is left: one event without its terminator (or two, when a held CR completed a terminator).
    last = [event.rstrip(b"\n") + b"\n\n" for event in buf.split(b"\n\n") if event.strip()]
    if last:
        yield last


def event_data(event: bytes) -> bytes | None:
    """The payload of an event's `data:` line(s), or None for comment/ping-only events."""
    if event.startswith(b"data: ") and event.count(b"\n") == 2:  # almost every event: one `data: ` line
        return event[6:-2].lstrip(b" ")
    parts = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not parts:
        return None
    return b"\n".join(parts)


def event_name(event: bytes) -> str | None:
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip().decode()
    return None


async def prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The first frame (already awaited, so early errors stayed HTTP errors), then the rest; closes the rest."""
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
