"""The background task that writes what each replica batches in memory.

Usage counters and TPM corrections are batched per replica so a request costs
no extra Redis round trip for them; this loop writes them out on a fixed beat,
and once more at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Sequence

log = logging.getLogger("llm_gateway")

Flush = Callable[[], Awaitable[None]]


async def flush_periodically(flushes: Sequence[Flush], interval_s: float,
                             on_error: Callable[[BaseException], None] | None = None) -> None:
    """Run every flush each `interval_s` until cancelled, then once more. A failed flush keeps its data."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            await _flush_all(flushes, on_error)
    finally:
        await _flush_all(flushes, None)


async def _flush_all(flushes: Sequence[Flush], on_error: Callable[[BaseException], None] | None) -> None:
    for flush in flushes:
        try:
            await flush()
        except Exception as exc:  # kept for the next round
            if on_error is not None:
                on_error(exc)
