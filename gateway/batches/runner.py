"""Runs batches: takes a batch (a lease, so one replica at a time), runs its lines through the pipeline
on spare capacity, and writes the output and error files when the last line is done.

Each line is a request like a live one (auth as the batch's key, its routes and rules, failover, the
cache, usage, spend and budgets), tagged with its batch in the request log. Lines start only while fewer
than `batches.yield_to_interactive` live requests are in flight on this replica, at most
`batches.concurrency` at a time. A retryable failure (overloaded, unavailable) is retried with backoff
before the line counts as failed. Every finished line is recorded at once, by `custom_id`, first write
wins: a gateway that stops (or dies) mid-batch leaves a lease that lapses, and whichever replica takes
the batch next runs only the lines not recorded, so none is lost and none is recorded twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from functools import partial
from typing import Any

import orjson
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.priority import Priority
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, validate_request
from gateway import observe
from gateway.auth import ANONYMOUS, Principal
from gateway.batches.blobs import BlobStore
from gateway.batches.jsonl import parse_lines
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

log = logging.getLogger("llm_gateway.batches")

KINDS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest,
         "/v1/embeddings": EmbeddingRequest, "/v1/responses": ResponsesRequest}
POLL_S = 0.5
FINAL = ("completed", "failed", "expired", "cancelled")


def new_id(prefix: str, n: int = 12) -> str:
    return f"{prefix}{os.urandom(n).hex()}"


async def _identity(aw: Any) -> Any:
    return await aw


async def _principal_of(principal: Principal) -> Principal:
    return principal


class BatchRunner:
    def __init__(self, svc: Services, manager: RuntimeManager, store: BatchStore, blobs: BlobStore,
                 config: BatchesConfig) -> None:
        self.svc, self.manager, self.store, self.blobs, self.config = svc, manager, store, blobs, config
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"
        self._running: dict[str, asyncio.Task[None]] = {}
        self.in_flight = 0

    async def run_forever(self) -> None:
        while True:
            try:
                await self.take_batches()
            except StoreUnavailable as exc:
                self.svc.link.record_error(exc)
            except Exception:  # a bug in one pass must not stop batches for good
                log.exception("batch runner pass failed")
            await asyncio.sleep(POLL_S)

    async def aclose(self) -> None:
        for task in self._running.values():
            task.cancel()
        for task in list(self._running.values()):
            try:
                await task
            except BaseException:
                pass

    async def take_batches(self) -> None:
        for batch_id in await self.store.active():
            if batch_id in self._running:
                continue
            if await self.store.lease(batch_id, self.holder, self.config.lease_s):
                task = asyncio.create_task(self._run(batch_id), name=f"batch-{batch_id}")
                self._running[batch_id] = task
                task.add_done_callback(lambda _t, b=batch_id: self._running.pop(b, None))

    # -- one batch ---------------------------------------------------------------------------------------

    async def _run(self, batch_id: str) -> None:
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(batch_id, lost))
        try:
            found = await self.store.get("batch", batch_id)
            if found is None:
                await self.store.activate(batch_id, False)
                return
            batch, owner = found
            if batch["status"] in FINAL:
                await self.store.activate(batch_id, False)
                return
            if batch["status"] == "validating":
                batch.update(status="in_progress", in_progress_at=int(time.time()))
                await self.store.put("batch", batch, owner, self.config.retention_s)
            lines = await self._lines(batch)
            if lines is None:
                await self._finish(batch, owner, "failed", errors=[{"code": "input_file_missing", "line": None,
                                                                    "param": "input_file_id",
                                                                    "message": "The input file is gone."}])
                return
            stopped = await self._run_lines(batch, owner, lines, lost)
            if stopped != "lost":
                await self._finish(batch, owner, stopped or "completed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s failed to run; another pass retries it", batch_id)
        finally:
            renewer.cancel()
            try:
                await self.store.release(batch_id, self.holder)
            except StoreUnavailable:
                pass

    async def _renew(self, batch_id: str, lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            try:
                if not await self.store.lease(batch_id, self.holder, self.config.lease_s):
                    log.warning("lost the lease on batch %s; another replica runs it now", batch_id)
                    lost.set()
                    return
            except StoreUnavailable as exc:
                self.svc.link.record_error(exc)

    async def _lines(self, batch: dict[str, Any]) -> list[dict[str, Any]] | None:
        data = await self.blobs.get(batch["input_file_id"])
        return None if data is None else parse_lines(data, self.config.max_lines)

    async def _run_lines(self, batch: dict[str, Any], owner: str, lines: list[dict[str, Any]],
                         lost: asyncio.Event) -> str | None:
        """Run every line not finished yet; None when all are, else why it stopped early."""
        done = set(await self.store.lines(batch["id"]))
        todo = [line for line in lines if line["custom_id"] not in done]
        slots = asyncio.Semaphore(self.config.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        principal = await self._principal(owner)
        stop: str | None = None
        try:
            for line in todo:
                await slots.acquire()
                stop = await self._stop_reason(batch, lost)
                while stop is None and not self._spare():
                    await asyncio.sleep(0.02)  # live requests first: wait for the replica to be idle enough
                    stop = await self._stop_reason(batch, lost)
                if stop is not None:
                    slots.release()
                    break
                task = asyncio.create_task(self._line(batch, line, principal))
                tasks.add(task)
                task.add_done_callback(lambda t: (tasks.discard(t), slots.release()))
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
        if stop == "expired":
            await self._expire_rest(batch, lines)
        return stop

    def _spare(self) -> bool:
        return observe.live_in_flight() < self.config.yield_to_interactive

    async def _stop_reason(self, batch: dict[str, Any], lost: asyncio.Event) -> str | None:
        if lost.is_set():
            return "lost"
        if await self.store.cancelled(batch["id"]) is not None:
            return "cancelled"
        if time.time() >= batch["expires_at"]:
            return "expired"
        return None

    async def _principal(self, owner: str) -> Principal | None:
        """The batch's key as it is now (a revoked or expired key stops its batch's lines with a 401)."""
        if owner == "master":
            return Principal(master=True)
        if owner == "anonymous":
            return ANONYMOUS
        record = await self.svc.keys.get(owner.removeprefix("key:"))
        return Principal(key=record) if record is not None and not record.revoked and not record.expired else None

    async def _line(self, batch: dict[str, Any], line: dict[str, Any], principal: Principal | None) -> None:
        request_id = new_id("batch_req_")
        status, body = 401, GatewayError("The batch's API key has been revoked or has expired.", status_code=401,
                                         error_type="invalid_request_error", code="invalid_api_key").body()
        if principal is not None:
            for attempt in range(self.config.line_retries + 1):
                status, body, retryable = await self.execute(line, principal, request_id, batch["id"])
                if not retryable or attempt == self.config.line_retries:
                    break
                await asyncio.sleep(min(8.0, 0.5 * 2 ** attempt))
        out = {"id": request_id, "custom_id": line["custom_id"],
               "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None}
        await self.store.record_line(batch["id"], line["custom_id"], out, status != 200, self.config.retention_s)

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

    async def _expire_rest(self, batch: dict[str, Any], lines: list[dict[str, Any]]) -> None:
        done = set(await self.store.lines(batch["id"]))
        for line in lines:
            if line["custom_id"] not in done:
                out = {"id": new_id("batch_req_"), "custom_id": line["custom_id"], "response": None,
                       "error": {"code": "batch_expired",
                                 "message": "This request could not be executed before the completion window "
                                            "expired."}}
                await self.store.record_line(batch["id"], line["custom_id"], out, True, self.config.retention_s)

    async def _finish(self, batch: dict[str, Any], owner: str, status: str,
                      errors: list[dict[str, Any]] | None = None) -> None:
        """Write the output and error files (the input's order), then the batch's final state."""
        now = int(time.time())
        batch.update(status="finalizing", finalizing_at=now)
        await self.store.put("batch", batch, owner, self.config.retention_s)
        recorded = await self.store.lines(batch["id"])
        order = [line["custom_id"] for line in (await self._lines(batch) or [])]
        ok = [recorded[c] for c in order if c in recorded and (recorded[c].get("response") or {}).get("status_code")
              == 200]
        bad = [recorded[c] for c in order if c in recorded and recorded[c] not in ok]
        for name, rows in (("output_file_id", ok), ("error_file_id", bad)):
            if rows:
                file_obj = await self.write_file(b"".join(orjson.dumps(r) + b"\n" for r in rows),
                                                 f"batch_{batch['id']}_{name.split('_')[0]}.jsonl", owner,
                                                 "batch_output")
                batch[name] = file_obj["id"]
        stamp = {"completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
                 "cancelled": "cancelled_at"}[status]
        batch.update(status=status, **{stamp: int(time.time())})
        if status == "cancelled":
            asked = await self.store.cancelled(batch["id"])
            batch["cancelling_at"] = int(asked) if asked is not None else batch[stamp]
        if errors:
            batch["errors"] = {"object": "list", "data": errors}
        await self.store.put("batch", batch, owner, self.config.retention_s)
        await self.store.activate(batch["id"], False)
        log.info("batch %s %s: %d lines ok, %d failed", batch["id"], status, len(ok), len(bad))

    async def write_file(self, data: bytes, filename: str, owner: str, purpose: str) -> dict[str, Any]:
        now = int(time.time())
        obj = {"id": new_id("file-"), "object": "file", "bytes": len(data), "created_at": now, "filename": filename,
               "purpose": purpose, "status": "processed", "status_details": None,
               "expires_at": now + int(self.config.retention_s)}
        await self.blobs.put(obj["id"], data)
        await self.store.put("file", obj, owner, self.config.retention_s)
        return obj
