"""Cancel a non-streaming request's work when its client goes away.

Starlette already stops a streaming response on disconnect; a plain
`await backend.chat(...)` would run to the end for nobody. After the body has
been read, the next ASGI message can only be `http.disconnect`.

Most answers take a few milliseconds, so the watcher is not started at once:
a timer starts it after `WATCH_AFTER_S`, and a fast request only pays for
scheduling and cancelling that timer. The work runs in the request's own task,
which the watcher cancels on disconnect.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from starlette.requests import Request

T = TypeVar("T")

WATCH_AFTER_S = 0.5  # a client that leaves sooner costs at most this much wasted upstream work


class ClientDisconnected(Exception):
    """The client left before the answer was ready; nothing is sent."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    loop = asyncio.get_running_loop()
    owner = asyncio.current_task()
    assert owner is not None
    state: dict[str, asyncio.Task | bool] = {}

    def start_watching() -> None:
        state["watcher"] = loop.create_task(_cancel_on_disconnect(request, owner, state))

    timer = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if state.get("gone") and owner.uncancel() == 0:
            raise ClientDisconnected() from None
        raise
    finally:
        timer.cancel()
        watcher = state.get("watcher")
        if isinstance(watcher, asyncio.Task):
            watcher.cancel()


async def _cancel_on_disconnect(request: Request, owner: asyncio.Task, state: dict) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            state["gone"] = True
            owner.cancel()  # the backend's cleanup (e.g. cancelling an engine job) runs in the owner
            return
