"""Small asyncio helpers shared by the hot paths."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")

_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+


async def within(aw: Awaitable[T], seconds: float) -> T:
    """`asyncio.wait_for` without its extra task per call (Python 3.11+): it runs per request,
    per Redis call and per streamed token, so the task would cost on every one of them."""
    if _HAS_TIMEOUT:
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)
