"""The gRPC calls in flight, and the door new ones come in by: what the drain waits for.

grpc's own `server.stop(grace)` waits for every RPC, a health `Watch` that never ends included, so a
drain would always take its whole grace. The gate counts only the gateway's own calls: on the drain it
closes (a new call is UNAVAILABLE `shutting_down`, which clients retry elsewhere), the server waits until
the calls in flight are done or the drain time is up, and only then stops, cutting what is left."""

from __future__ import annotations

import asyncio
import contextlib

from backends.contract.errors import GatewayError


class ShuttingDown(GatewayError):
    status_code = 503
    error_type = "service_unavailable_error"
    code = "shutting_down"
    retryable = True


class Gate:
    def __init__(self) -> None:
        self.open = True
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        if not self.open:
            raise ShuttingDown("The gateway is shutting down; send the call to another replica.")
        self.active += 1
        self._idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self.active = 0
            self._idle.set()

    async def close(self, timeout_s: float) -> bool:
        """Close the door and wait for the calls in flight, up to `timeout_s`; True when none is left."""
        self.open = False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self.active == 0
