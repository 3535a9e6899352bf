"""Small asyncio helpers shared by the hot paths."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Coroutine, TypeVar

T = TypeVar("T")

_HAS_TIMEOUT = hasattr(asyncio, "timeout")  # Python 3.11+


async def within(aw: Awaitable[T], seconds: float) -> T:
    """`asyncio.wait_for` without its extra task per call (Python 3.11+): it runs per request,
    per Redis call and per streamed token, so the task would cost on every one of them."""
    if _HAS_TIMEOUT:
        async with asyncio.timeout(seconds):
            return await aw
    return await asyncio.wait_for(aw, seconds)


_running_on: set[asyncio.Future[Any]] = set()  # work that outlived the request that started it


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` and let it finish even if the caller is cancelled meanwhile (a client that left):
    accounting that was started must not be cut in half. The caller still sees its CancelledError; the
    work runs on, held here until it is done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _running_on.add(task)
            task.add_done_callback(_running_on.discard)
        raise
