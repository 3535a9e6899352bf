"""The JSON request log: one line per request on stderr, written in small batches.

A log line per request through `logging` costs a LogRecord, a formatter and a
write system call each time, which at thousands of requests a second is a
visible share of the gateway's own CPU. Lines are appended to a buffer and
written together at most `DELAY_S` after the first of them (or at once when
the buffer is large), so an idle gateway still shows each line within 50 ms.
"""

from __future__ import annotations

import asyncio
import sys
from typing import IO

DELAY_S = 0.05
MAX_BUFFER = 64 * 1024

enabled = True
_buffer: list[bytes] = []
_size = 0
_scheduled = False


def configure(on: bool) -> None:
    global enabled
    enabled = on


def write(line: bytes) -> None:
    """Queue one line (without its newline); never blocks the event loop for long."""
    global _size, _scheduled
    if not enabled:
        return
    _buffer.append(line)
    _size += len(line) + 1
    if _size >= MAX_BUFFER:
        flush()
    elif not _scheduled:
        try:
            asyncio.get_running_loop().call_later(DELAY_S, flush)
            _scheduled = True
        except RuntimeError:  # no loop (a CLI, a test): write at once
            flush()


def flush(stream: IO[bytes] | None = None) -> None:
    global _size, _scheduled
    _scheduled = False
    if not _buffer:
        return
    data = b"\n".join(_buffer) + b"\n"
    _buffer.clear()
    _size = 0
    out = stream or sys.stderr.buffer
    try:
        out.write(data)
        out.flush()
    except (OSError, ValueError):  # stderr closed (shutdown) or a broken pipe: lines are lost, requests are not
        pass
