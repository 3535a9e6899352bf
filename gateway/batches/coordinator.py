"""Starts and ends batches: per batch one replica at a time (a lease it renews; a dead one's lapses and any
other takes over), while every replica runs the batch's lines (gateway.batches.runner).

Starting: the batch goes `in_progress` and its lines not finished yet are queued, once (a coordinator that
takes over finds them queued, or resumes queueing after the last one). Ending: when every line is
recorded the batch completes; when it was cancelled or expired, the coordinator first lets the lines in
flight finish (they stay pending in the queue until recorded: it waits for none to be left, at most
DRAIN_S after the cancel or the expiry, as OpenAI lets in-flight requests finish), records the lines that
never ran as expired (expiry only), then writes the output and error files in the input's order and the
final state, and drops the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway.batches.blobs import BlobStore
from gateway.batches.inputs import Inputs, Lines
from gateway.batches.queue import WorkQueue
from gateway.batches.stores import BatchStore
from gateway.store_errors import StoreUnavailable
from routing.config import BatchesConfig

log = logging.getLogger("llm_gateway.batches")

POLL_S = 0.5
DRAIN_S = 600.0  # how long a cancelled or expired batch waits for its lines in flight
FINAL = ("completed", "failed", "expired", "cancelled")
_STAMP = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at", "cancelled": "cancelled_at"}
_INPUT_GONE = {"code": "input_file_missing", "line": None, "param": "input_file_id",
               "message": "The input file is gone."}


class Coordinator:
    def __init__(self, store: BatchStore, queue: WorkQueue, blobs: BlobStore, inputs: Inputs,
                 config: BatchesConfig, holder: str, new_id: Callable[[str], str],
                 on_store_error: Callable[[StoreUnavailable], None], on_queued: Callable[[str], None]) -> None:
        self.store, self.queue, self.blobs, self.inputs, self.config = store, queue, blobs, inputs, config
        self.holder, self.new_id, self.on_store_error, self.on_queued = holder, new_id, on_store_error, on_queued
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def take(self, active: list[str]) -> None:
        """Coordinate each active batch no replica coordinates (this one included)."""
        for batch_id in active:
            if batch_id not in self._tasks and await self.store.lease(batch_id, self.holder, self.config.lease_s):
                task = asyncio.create_task(self._coordinate(batch_id), name=f"batch-{batch_id}")
                self._tasks[batch_id] = task
                task.add_done_callback(lambda _t, b=batch_id: self._tasks.pop(b, None))

    async def aclose(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # it logged its own failure
                await task

    async def _coordinate(self, batch_id: str) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(batch_id, lost))
        try:
            await self._steer(batch_id, lost)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            self.on_store_error(exc)
        except Exception:
            log.exception("batch %s: coordinating it failed; another pass retries", batch_id)
        finally:
            renewer.cancel()
            try:
                await self.store.release(batch_id, self.holder)
            except StoreUnavailable:
                pass

    async def _steer(self, batch_id: str, lost: asyncio.Event) -> None:
        found = await self.store.get("batch", batch_id)
        if found is None or found[0]["status"] in FINAL:  # gone, or ended by a coordinator that died after
            await self._forget(batch_id)
            return
        batch, owner = found
        lines = await self.inputs.get(batch)
        if lines is None:
            await self.finish(batch, owner, "failed", [], errors=[_INPUT_GONE])
            return
        if batch["status"] == "validating":
            batch.update(status="in_progress", in_progress_at=int(time.time()))
            await self.store.put("batch", batch, owner, self.config.retention_s)
        while not lost.is_set():
            outcome = await self._outcome(batch, len(lines))
            if outcome is not None:
                await self.finish(batch, owner, outcome, lines)
                return
            if not await self.queue.queued(batch_id):
                done = await self.store.finished(batch_id)
                todo = [i for i, line in enumerate(lines) if line["custom_id"] not in done]
                await self.queue.enqueue(batch_id, todo, self.config.retention_s)
                log.info("batch %s: %d lines queued (%d finished before)", batch_id, len(todo), len(done))
                self.on_queued(batch_id)
            await asyncio.sleep(POLL_S)

    async def _renew(self, batch_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                if not await self.store.lease(batch_id, self.holder, self.config.lease_s):
                    log.warning("lost the lease on batch %s; another replica coordinates it now", batch_id)
                    lost.set()
                    return
            except StoreUnavailable as exc:
                self.on_store_error(exc)

    async def _outcome(self, batch: dict[str, Any], total: int) -> str | None:
        """How the batch ends, once it does: None while lines are left to run, or still in flight."""
        asked = await self.store.cancelled(batch["id"])
        now = time.time()
        if asked is None and now < batch["expires_at"]:
            done, _failed = await self.store.counts(batch["id"])
            return "completed" if done >= total else None
        stopped_at = asked if asked is not None else batch["expires_at"]
        if await self.queue.pending(batch["id"]) > 0 and now < stopped_at + DRAIN_S:
            return None
        return "cancelled" if asked is not None else "expired"

    async def _expire_rest(self, batch: dict[str, Any], lines: Lines) -> None:
        done = await self.store.finished(batch["id"])
        for line in lines:
            if line["custom_id"] not in done:
                out = {"id": self.new_id("batch_req_"), "custom_id": line["custom_id"], "response": None,
                       "error": {"code": "batch_expired",
                                 "message": "This request could not be executed before the completion window "
                                            "expired."}}
                await self.store.record_line(batch["id"], line["custom_id"], out, True, self.config.retention_s)

    async def finish(self, batch: dict[str, Any], owner: str, status: str, lines: Lines,
                     errors: list[dict[str, Any]] | None = None) -> None:
        """Write the output and error files (the input's order), then the batch's final state."""
        batch.update(status="finalizing", finalizing_at=int(time.time()))
        await self.store.put("batch", batch, owner, self.config.retention_s)
        if status == "expired":
            await self._expire_rest(batch, lines)
        recorded = await self.store.lines(batch["id"])
        rows = [recorded[line["custom_id"]] for line in lines if line["custom_id"] in recorded]
        ok = [r for r in rows if (r.get("response") or {}).get("status_code") == 200]
        bad = [r for r in rows if (r.get("response") or {}).get("status_code") != 200]
        for name, part in (("output_file_id", ok), ("error_file_id", bad)):
            if part:
                file_obj = await self.write_file(b"".join(orjson.dumps(r) + b"\n" for r in part),
                                                 f"batch_{batch['id']}_{name.split('_')[0]}.jsonl", owner,
                                                 "batch_output")
                batch[name] = file_obj["id"]
        batch.update(status=status, **{_STAMP[status]: int(time.time())})
        if status == "cancelled":
            asked = await self.store.cancelled(batch["id"])
            batch["cancelling_at"] = int(asked) if asked is not None else batch[_STAMP[status]]
        if errors:
            batch["errors"] = {"object": "list", "data": errors}
        await self.store.put("batch", batch, owner, self.config.retention_s)
        await self._forget(batch["id"])
        log.info("batch %s %s: %d lines ok, %d failed", batch["id"], status, len(ok), len(bad))

    async def _forget(self, batch_id: str) -> None:
        await self.store.activate(batch_id, False)
        await self.queue.drop(batch_id)

    async def write_file(self, data: bytes, filename: str, owner: str, purpose: str) -> dict[str, Any]:
        now = int(time.time())
        obj = {"id": self.new_id("file-"), "object": "file", "bytes": len(data), "created_at": now,
               "filename": filename, "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": now + int(self.config.retention_s)}
        await self.blobs.put(obj["id"], data)
        await self.store.put("file", obj, owner, self.config.retention_s)
        return obj
