"""What every llama.cpp engine shares: one worker thread, a bounded job queue, and its lifecycle.

llama.cpp contexts are not thread-safe and every call blocks, so each engine
owns one thread; the event loop only enqueues jobs (never blocking) and awaits
the events the thread posts back. Subclasses load the model (`_load`), serve
jobs until the `None` sentinel (`_serve`) and cancel what they are running
(`_cancel_running`). They call `after_step` after each decode step (or token)
and before they block: whoever carries the events away (the engine process's
connections) then sends everything a step produced at once, waking its event
loop once per step rather than once per sequence.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable

from backends.llamacpp.jobs import END

log = logging.getLogger("llm_gateway.llamacpp")


class EngineThread:
    def __init__(self, settings: Any, name: str = "llamacpp") -> None:
        self.settings = settings
        self.name = name
        self.llm: Any = None  # a `Llama`: tokenizer and metadata for the backend
        self._queue: queue.Queue[Any] = self._new_queue()
        self._thread: threading.Thread | None = None
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self.after_step: Callable[[], None] = lambda: None  # on the engine thread; see the module docstring

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"llama-{self.name}", daemon=True)
        self._thread.start()

    async def wait_loaded(self) -> None:
        await asyncio.to_thread(self._loaded.wait)
        if self._load_error is not None:
            raise self._load_error

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set() and self._load_error is None

    @property
    def load_error(self) -> BaseException | None:
        return self._load_error

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what runs, drop what waits (each job gets its END), and end the thread."""
        self._cancel_running()
        while True:  # drop queued work so the sentinel gets in
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None:
                pending.cancelled.set()
                pending.post((END,))
        self.after_step()
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def extra_info(self) -> dict[str, Any]:
        """Facts for the engine's HELLO beyond the common ones (read once it is loaded)."""
        return {}

    def stats(self) -> dict[str, int]:
        """Engine-specific counters beyond the common ones."""
        return {}

    def snapshot(self) -> dict[str, Any]:
        """The counters `/ready` shows and `least-busy` routing reads (the engine process sends them)."""
        s: Any = self
        return {"queue_depth": s.depth, "busy": int(bool(s.busy)), "load": s.load, "completed": s.completed,
                "cancelled": s.cancelled, "tokens_generated": s.tokens_generated,
                "retry_after": round(s.retry_after(), 2), **self.stats()}

    def submit(self, job: Any) -> None:
        """Enqueue or raise `queue.Full`; never blocks the event loop."""
        if self._ahead(job) >= self.settings.max_queue:
            raise queue.Full
        self._queue.put_nowait(job)

    def _new_queue(self) -> queue.Queue[Any]:
        """A FIFO queue of `max_queue` jobs; the generation engines order theirs by class (`schedule`)."""
        return queue.Queue(maxsize=self.settings.max_queue)

    def _ahead(self, job: Any) -> int:
        """Jobs waiting that would be served before this one or with it, which `max_queue` bounds; a
        plain FIFO queue bounds itself."""
        return 0

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported through /ready, never raised on the loop
            log.error("model %s failed to load: %s", self.name, exc)
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        self._serve()

    def _load(self) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        raise NotImplementedError

    def _cancel_running(self) -> None:
        raise NotImplementedError
