"""Runs batches' lines: every replica takes lines of any active batch from the work queue
(gateway.batches.queue) when it has a free slot, runs each through the pipeline on spare capacity, records
it and acknowledges it; a coordinator per batch (gateway.batches.coordinator) starts and ends it.

Each line is a request like a live one (auth as the batch's key, its routes and rules, failover, the
cache, usage, spend and budgets), tagged with its batch in the request log. Lines start only while fewer
than `batches.yield_to_interactive` live requests are in flight on this replica, at most
`batches.concurrency` at a time (across all batches), taken from the active batches in turn. A retryable
failure (overloaded, unavailable) is retried with backoff before the line counts as failed.

No line lost, none run twice to completion: a line stays pending in the queue, under this replica's name,
from when it is taken until it is recorded (by `custom_id`, first write wins) and acknowledged; while it
runs, a heartbeat keeps it (every `lease_s` / 3). A replica that dies leaves its lines pending, unkept;
after `lease_s` any other reclaims them, and skips those already recorded (it died between record and
acknowledgement). A line of a cancelled or expired batch is acknowledged without running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import orjson
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.priority import Priority
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate_request
from gateway import observe
from gateway.auth import ANONYMOUS, Principal
from gateway.batches.blobs import BlobStore
from gateway.batches.coordinator import FINAL, POLL_S, Coordinator
from gateway.batches.inputs import Inputs, Lines
from gateway.batches.queue import WorkQueue
from gateway.batches.stores import BatchStore
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes import responses
from gateway.routes.observed import observed
from gateway.services import Services
from gateway.store_errors import StoreUnavailable
from gateway.surfaces.responses.protocol import ResponsesRequest
from routing.config import BatchesConfig
from routing.manager import RuntimeManager

__all__ = ["FINAL", "BatchRunner", "new_id"]

log = logging.getLogger("llm_gateway.batches")

KINDS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
         "/v1/embeddings": EmbeddingRequest, "/v1/responses": ResponsesRequest}
REFRESH_S = 1.0  # how stale a replica's view of a batch (its state, cancel, key) may be before a line starts
STORE_RETRIES = 4  # a line's record and acknowledgement outlast a short store outage: it is not run again
T = TypeVar("T")


def new_id(prefix: str, n: int = 12) -> str:
    return f"{prefix}{os.urandom(n).hex()}"


async def _identity(aw: Any) -> Any:
    return await aw


async def _principal_of(principal: Principal) -> Principal:
    return principal


@dataclass
class _Batch:
    """What this replica knows of an active batch, refreshed every REFRESH_S."""

    id: str
    doc: dict[str, Any]
    owner: str
    lines: Lines | None
    principal: Principal | None
    cancelled: bool
    refreshed: float = field(default_factory=time.monotonic)
    reclaimed: float = 0.0  # when this replica last looked for lines a dead one left

    @property
    def takes_new(self) -> bool:
        return (self.lines is not None and self.doc["status"] == "in_progress" and not self.cancelled
                and time.time() < self.doc["expires_at"])


def _weight(principal: Principal | None) -> float:
    """A tenant's share of the batch slots: its key's `weight` (1 when unset)."""
    weight = principal.key.weight if principal is not None and principal.key is not None else None
    return weight if weight else 1.0


class BatchRunner:
    def __init__(self, svc: Services, manager: RuntimeManager, store: BatchStore, blobs: BlobStore,
                 config: BatchesConfig, queue: WorkQueue) -> None:
        self.svc, self.manager, self.store, self.blobs, self.config = svc, manager, store, blobs, config
        self.queue = queue
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self.inputs = Inputs(blobs)
        self.coordinator = Coordinator(store, queue, blobs, self.inputs, config, self.holder, new_id,
                                       svc.link.record_error, self._queued)
        self._running: dict[asyncio.Task[None], tuple[str, int]] = {}  # line tasks -> (batch id, line index)
        self._batches: dict[str, _Batch] = {}
        self._active: list[str] = []
        self._active_at = -math.inf
        self._turn = 0
        self._wake = asyncio.Event()  # a line ended, or a batch was queued here: take lines now
        self._kick = asyncio.Event()  # a batch was created here: coordinate it now
        self.in_flight = 0

    async def write_file(self, data: bytes, filename: str, owner: str, purpose: str) -> dict[str, Any]:
        return await self.coordinator.write_file(data, filename, owner, purpose)

    async def run_forever(self) -> None:
        await asyncio.gather(self._forever(self._coordinate, POLL_S, self._kick), self._work_forever(),
                             self._forever(self._keep, self.config.lease_s / 3))

    def created(self) -> None:
        """A batch was just created on this replica: start it now, not at the next pass."""
        self._active_at = -math.inf
        self._kick.set()

    def _queued(self, batch_id: str) -> None:
        self._batches.pop(batch_id, None)  # seen anew at once: it is in progress, with lines to take
        self._active_at = -math.inf
        self._wake.set()

    async def _forever(self, step: Callable[[], Awaitable[None]], every_s: float,
                       early: asyncio.Event | None = None) -> None:
        while True:
            if early is not None:
                early.clear()
            await self._guarded(step())
            if early is None:
                await asyncio.sleep(every_s)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(early.wait(), every_s)

    async def _guarded(self, aw: Awaitable[T]) -> T | None:
        try:
            return await aw
        except StoreUnavailable as exc:
            self.svc.link.record_error(exc)
        except Exception:  # a bug in one pass must not stop batches for good
            log.exception("batch runner pass failed")
        return None

    async def aclose(self) -> None:
        """Stop: lines in flight are given back to the queue (another replica takes them at once)."""
        unfinished: dict[str, list[int]] = defaultdict(list)
        for task, (batch_id, index) in list(self._running.items()):
            task.cancel()
            unfinished[batch_id].append(index)
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for batch_id, indices in unfinished.items():
            try:
                await self.queue.give_back(batch_id, self.holder, indices)
            except StoreUnavailable:
                pass  # they go idle and are reclaimed after lease_s
        await self.coordinator.aclose()
        await self.store.aclose()

    async def _active_batches(self) -> list[str]:
        if time.monotonic() - self._active_at >= REFRESH_S:
            self._active = await self.store.active()
            self._active_at = time.monotonic()
        return self._active

    async def _coordinate(self) -> None:
        await self.coordinator.take(await self._active_batches())

    # -- taking lines --------------------------------------------------------------------------------------

    async def _work_forever(self) -> None:
        while True:
            self._wake.clear()
            free = self.config.concurrency - len(self._running)
            if free > 0 and self._spare():
                if await self._guarded(self._fill(free)):
                    continue
                delay = POLL_S  # nothing to take: look again soon, or when a line ends
            else:
                delay = 0.02 if free > 0 else POLL_S  # live requests first: wait for the replica to be idle enough
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _spare(self) -> bool:
        return observe.live_in_flight() < self.config.yield_to_interactive

    async def _fill(self, free: int) -> int:
        """Take up to `free` lines from the active batches: each tenant (a batch's key) a share of the free
        slots by its key's weight, whatever its number of batches (`choose` orders them), split between its
        batches in turn; how many started."""
        batches = await self._views()
        now = time.monotonic()
        candidates = [b for b in batches if b.lines is not None
                      and (b.takes_new or now - b.reclaimed >= self.config.lease_s / 2)]
        started = 0
        weights = {b.owner: _weight(b.principal) for b in candidates}
        left = {owner: math.ceil(free * w / sum(weights.values())) for owner, w in weights.items()}
        for batch in self.choose(candidates):
            want = min(left[batch.owner], free - started)
            if want <= 0:
                continue
            taken: list[int] = []
            if now - batch.reclaimed >= self.config.lease_s / 2:
                batch.reclaimed = now
                taken = await self.queue.reclaim(batch.id, self.holder, self.config.lease_s, want)
                if taken:
                    log.warning("batch %s: took over %d lines another replica had left unfinished", batch.id,
                                len(taken))
            if batch.takes_new and len(taken) < want:
                taken += await self.queue.take(batch.id, self.holder, want - len(taken))
            for index in taken:
                self._start(batch, index)
            started += len(taken)
            left[batch.owner] -= len(taken)
        return started

    def choose(self, batches: list[_Batch]) -> list[_Batch]:
        """The order to take lines in: the tenant (the batches' key) with the fewest lines running here for
        its key's weight first, so that one tenant's bulk work, however many batches, cannot hold every
        slot; within that, the active batches in turn, one further each time."""
        if not batches:
            return []
        self._turn = (self._turn + 1) % len(batches)
        turned = batches[self._turn:] + batches[:self._turn]
        owners = {b.id: b.owner for b in batches}
        running = Counter(owners.get(batch_id) for batch_id, _ in self._running.values())
        return sorted(turned, key=lambda b: running[b.owner] / _weight(b.principal))  # stable: keeps the turn

    async def _views(self) -> list[_Batch]:
        active = await self._active_batches()
        for batch_id in [b for b in self._batches if b not in active]:
            del self._batches[batch_id]
        self.inputs.keep_only(active)
        now = time.monotonic()
        for batch_id in active:
            known = self._batches.get(batch_id)
            if known is None or now - known.refreshed >= REFRESH_S:
                view = await self._view(batch_id)
                if view is None:
                    self._batches.pop(batch_id, None)
                else:
                    view.reclaimed = known.reclaimed if known is not None else 0.0
                    self._batches[batch_id] = view
        return list(self._batches.values())

    async def _view(self, batch_id: str) -> _Batch | None:
        found = await self.store.get("batch", batch_id)
        if found is None:
            return None
        doc, owner = found
        lines = await self.inputs.get(doc) if doc["status"] not in ("validating", *FINAL) else None
        return _Batch(batch_id, doc, owner, lines, await self._principal(owner),
                      await self.store.cancelled(batch_id) is not None)

    async def _principal(self, owner: str) -> Principal | None:
        """The batch's key as it is now (a revoked or expired key stops its batch's lines with a 401)."""
        if owner == "master":
            return Principal(master=True)
        if owner == "anonymous":
            return ANONYMOUS
        record = await self.svc.keys.get(owner.removeprefix("key:"))
        return Principal(key=record) if record is not None and not record.revoked and not record.expired else None

    # -- one line ------------------------------------------------------------------------------------------

    def _start(self, batch: _Batch, index: int) -> None:
        task = asyncio.create_task(self._entry(batch, index), name=f"batch-{batch.id}-{index}")
        self._running[task] = (batch.id, index)

        def ended(t: asyncio.Task[None]) -> None:
            self._running.pop(t, None)
            self._wake.set()

        task.add_done_callback(ended)

    async def _entry(self, batch: _Batch, index: int) -> None:
        """Run a line taken from the queue (unless it need not run), record it, acknowledge it."""
        assert batch.lines is not None
        line = batch.lines[index]
        try:
            if await self._runs(batch, line):
                out = await self._line(batch, line)
                await self._persist(lambda: self.store.record_line(batch.id, line["custom_id"], out,
                                                                   out["response"]["status_code"] != 200,
                                                                   self.config.retention_s))
            await self._persist(lambda: self.queue.ack(batch.id, [index]))
        except StoreUnavailable as exc:  # left pending: reclaimed (here or elsewhere) after lease_s
            self.svc.link.record_error(exc)
        except Exception:  # a bug: left pending like the above, and said
            log.exception("batch %s: line %s failed to run", batch.id, line["custom_id"])

    async def _runs(self, batch: _Batch, line: dict[str, Any]) -> bool:
        """Whether a line taken now is to run: its batch still runs (asked now, not REFRESH_S ago, so that
        no line starts after the coordinator saw a cancel) and the line is not recorded yet."""
        return (batch.doc["status"] == "in_progress" and time.time() < batch.doc["expires_at"]
                and await self.store.cancelled(batch.id) is None
                and not await self.store.is_finished(batch.id, line["custom_id"]))

    async def _persist(self, op: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(STORE_RETRIES):
            try:
                return await op()
            except StoreUnavailable as exc:
                self.svc.link.record_error(exc)
                await asyncio.sleep(0.25 * 2 ** attempt)
        return await op()

    async def _keep(self) -> None:
        """The heartbeat of the lines running here, so that no other replica takes them."""
        running: dict[str, list[int]] = defaultdict(list)
        for batch_id, index in self._running.values():
            running[batch_id].append(index)
        for batch_id, indices in running.items():
            kept = await self.queue.keep(batch_id, self.holder, indices)
            if len(kept) < len(indices):
                log.warning("batch %s: %d lines running here were taken over by another replica (this one "
                            "stalled past batches.lease_s); the first to finish is kept", batch_id,
                            len(indices) - len(kept))

    async def _line(self, batch: _Batch, line: dict[str, Any]) -> dict[str, Any]:
        request_id = new_id("batch_req_")
        status, body = 401, GatewayError("The batch's API key has been revoked or has expired.", status_code=401,
                                         error_type="invalid_request_error", code="invalid_api_key").body()
        if batch.principal is not None:
            for attempt in range(self.config.line_retries + 1):
                status, body, retryable = await self.execute(line, batch.principal, request_id, batch.id)
                if not retryable or attempt == self.config.line_retries:
                    break
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
        return {"id": request_id, "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}

    async def execute(self, line: dict[str, Any], principal: Principal, request_id: str,
                      batch_id: str) -> tuple[int, dict[str, Any], bool]:
        """(status, body, retryable) of one line run through the pipeline as its key."""
        kind = KINDS[line["url"]]

        async def run(rec: RequestRecord) -> Response:
            body, runtime = validate_request(dict(line["body"]), kind), self.manager.current
            make_call = partial(Call, headers={}, request_id=request_id, rec=rec, until_disconnect=_identity,
                                preset=principal, priority=Priority.BATCH)
            if isinstance(body, ResponsesRequest):  # a surface: translated to chat and back, as its route does
                return await responses.respond(self.svc, runtime, body, rec, make_call,
                                               partial(_principal_of, principal))
            return await serve(self.svc, runtime, make_call(body))

        self.in_flight += 1
        try:
            endpoint = "responses" if kind is ResponsesRequest else kind.endpoint  # as the live routes log it
            response = await observed(request_id, endpoint, run, batch=batch_id)
            return response.status_code, orjson.loads(response.body), False
        except GatewayError as exc:
            return exc.status_code, exc.body(), exc.retryable or exc.status_code in (429, 503)
        except Exception:  # a bug: this line's error, never the runner's
            log.exception("batch %s line %s failed", batch_id, line["custom_id"])
            return 500, {"error": {"message": "The gateway failed on this request.", "type": "server_error",
                                   "param": None, "code": "internal_error"}}, False
        finally:
            self.in_flight -= 1
