"""The graceful drain of one worker: what happens between SIGTERM (or SIGINT) and the process's exit.

uvicorn stops accepting HTTP connections on the signal (it closes its listening socket, so a new client is
refused at once and a load balancer moves on) and gives requests in flight, streams included,
`server.drain_timeout_s` to finish before it cuts them; only then does the app's lifespan end. The gRPC
server must start draining at the signal too, not at that end, so this chains uvicorn's own signal
handler: gRPC then takes no new calls, its health service turns NOT_SERVING (a client watching it moves
on), and its calls in flight get the same drain time.
LLM streams run 30 to 300 s, so the default drain is two minutes; Kubernetes' terminationGracePeriodSeconds
and the preStop pause must add up to more (deploy/kubernetes/base/gateway-deployment.yaml)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("llm_gateway")
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.started: float | None = None  # time.monotonic() of the signal
        self._on_begin: list[Callable[[], None]] = []

    @property
    def draining(self) -> bool:
        return self.started is not None

    def left_s(self) -> float:
        """The drain time still left (all of it before the drain began)."""
        if self.started is None:
            return self.timeout_s
        return max(0.0, self.timeout_s - (time.monotonic() - self.started))

    def on_begin(self, callback: Callable[[], None]) -> None:
        self._on_begin.append(callback)

    def begin(self) -> None:
        """Once: mark the worker draining and run the callbacks (in the event loop)."""
        if self.started is not None:
            return
        self.started = time.monotonic()
        log.info("draining: no new work; requests in flight have up to %gs to finish", self.timeout_s)
        for callback in self._on_begin:
            try:
                callback()
            except Exception:
                log.exception("a drain callback failed")

    def hook_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run `begin` on SIGTERM/SIGINT, then whatever handler was there (uvicorn's, which shuts down).
        Only the main thread can set handlers; elsewhere (a server run in a thread, in tests) nothing is."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                # A fresh context: a signal lands in whatever task ran, and its request id is not the drain's.
                loop.call_soon_threadsafe(self.begin, context=contextvars.Context())
                if callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_DFL and signum == signal.SIGINT:
                    raise KeyboardInterrupt

            signal.signal(sig, handler)
