"""Low-level HTTP/SSE helpers: event framing, chunked streams and abrupt closes.

Kept apart from the server lifecycle so every protocol module shares one
implementation of the things fault tests depend on: flushing before a cut,
and RST versus plain close.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import Any, Iterable

import orjson
from aiohttp import web

from tests.sim import faults as F
from tests.sim.faults import Fault

_Key: Any = getattr(web, "RequestKey", None)  # aiohttp >= 3.12; plain string keys before
#: The request body parsed as JSON (None if empty or invalid) and whether it parsed.
BODY = _Key("sim_body", object) if _Key else "sim_body"
BODY_OK = _Key("sim_body_ok", bool) if _Key else "sim_body_ok"
DROPPED_STATUS = 599  # status of the placeholder response returned after dropping a connection


@dataclass
class StreamEvent:
    """One SSE event; ``counts`` marks the content-bearing ones that faults count."""

    data: bytes
    counts: bool = False


def sse_data(obj: Any) -> bytes:
    """``data: <json>\\n\\n`` (OpenAI/vLLM framing)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    """``event: <name>\\ndata: <json>\\n\\n`` (Anthropic framing)."""
    return b"event: " + name.encode() + b"\n" + sse_data(obj)


async def drop(request: web.Request, reset: bool = False) -> web.StreamResponse:
    """Close the connection abruptly, after flushing what was already written.

    ``reset`` sends an RST (connection reset by peer); otherwise a plain close,
    which the peer sees as a body cut short (incomplete chunked read).
    """
    transport = request.transport
    if transport is not None:
        for _ in range(100):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.01)
        if reset:
            rst(transport)
        else:
            transport.abort()
    return web.Response(status=DROPPED_STATUS)  # never reaches the peer


async def open_stream(request: web.Request, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Start a chunked ``text/event-stream`` response."""
    resp = web.StreamResponse(
        status=200, headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", **(headers or {})}
    )
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    return resp


async def send_stream(
    request: web.Request, resp: web.StreamResponse, events: Iterable[StreamEvent],
    fault: Fault | None, error_event: bytes = b"",
) -> web.StreamResponse:
    """Write ``events`` honouring cut_stream / chunk_delay / in_band_error, then end the body."""
    limit = fault.after_chunks if fault and fault.kind in (F.CUT_STREAM, F.IN_BAND_ERROR) else None
    delay = fault.seconds if fault and fault.kind == F.CHUNK_DELAY else 0.0
    stall_at = fault.after_chunks if fault and fault.kind == F.STALL else None
    sent = 0
    for i, ev in enumerate(events):
        if limit is not None and ev.counts and sent >= limit:
            break
        if delay and i:
            await asyncio.sleep(delay)
        if stall_at is not None and sent == stall_at:
            stall_at = None
            await asyncio.sleep(fault.seconds)  # type: ignore[union-attr]
        await resp.write(ev.data)
        sent += ev.counts
        if limit is not None and ev.counts and sent >= limit:
            break
    else:
        await resp.write_eof()
        return resp
    if fault is not None and fault.kind == F.CUT_STREAM:
        return await drop(request)
    await resp.write(error_event)
    await resp.write_eof()
    return resp


def rst(transport: asyncio.BaseTransport) -> None:
    """Abort with SO_LINGER 0 so the peer sees a reset, as after a crash."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()  # type: ignore[attr-defined]
