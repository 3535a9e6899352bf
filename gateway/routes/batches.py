"""The Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{id}`, `POST
/v1/batches/{id}/cancel`. A batch belongs to the key that created it and runs as that key
(gateway.batches.runner); another key gets a 404."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import OpenAIModel, parse_request
from gateway.batches.jsonl import ENDPOINTS, check_endpoint, parse_lines
from gateway.batches.runner import FINAL, new_id
from gateway.routes.files import caller, json, owned, unavailable
from gateway.store_errors import StoreUnavailable


class BatchCreate(OpenAIModel):
    _raw: dict[str, Any] | None = PrivateAttr(default=None)  # set by parse_request; unused here

    input_file_id: str = Field(min_length=1)
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


class FileUpload(BaseModel):
    """The form `POST /v1/files` takes (documented here; parsed as multipart/form-data in routes.files)."""

    purpose: Literal["batch"]
    file: bytes = Field(json_schema_extra={"format": "binary"})


async def create_batch(request: Request) -> Response:
    principal = await caller(request)
    req: BatchCreate = parse_request(await request.body(), BatchCreate, request.app.max_json_depth)
    if req.endpoint not in ENDPOINTS:
        raise InvalidRequest(f"Invalid value for 'endpoint': batches run {', '.join(ENDPOINTS)}.", param="endpoint",
                             code="invalid_endpoint")
    if req.completion_window != "24h":
        raise InvalidRequest("Invalid value for 'completion_window': only '24h' is supported.",
                             param="completion_window", code="invalid_completion_window")
    if req.metadata is not None and len(req.metadata) > 16:
        raise InvalidRequest("Invalid value for 'metadata': at most 16 pairs.", param="metadata")
    state = request.app.state.batches
    config = request.app.state.manager.current.config.batches
    file_obj = await owned(request, "file", req.input_file_id, principal)
    if file_obj["purpose"] != "batch":
        raise InvalidRequest("The input file's purpose must be 'batch'.", param="input_file_id",
                             code="invalid_input_file")
    data = await state.blobs.get(req.input_file_id)
    if data is None:
        raise InvalidRequest("The input file's content is gone.", param="input_file_id", code="invalid_input_file")
    lines = parse_lines(data, config.max_lines)
    check_endpoint(lines, req.endpoint)
    now = int(time.time())
    batch: dict[str, Any] = {
        "id": new_id("batch_"), "object": "batch", "endpoint": req.endpoint, "errors": None,
        "input_file_id": req.input_file_id, "completion_window": "24h", "status": "validating",
        "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
        "expires_at": now + 86_400, "finalizing_at": None, "completed_at": None, "failed_at": None,
        "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "metadata": req.metadata,
    }
    try:
        await state.store.put("batch", batch, principal.owner, config.retention_s)
        await state.store.activate(batch["id"], True)
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    state.runner.created()
    return json(batch)


async def present(request: Request, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch as it is now: its counts, and `cancelling` once a cancel was asked and it is not over."""
    store = request.app.state.batches.store
    done, failed = await store.counts(batch["id"])
    batch["request_counts"] = {**batch["request_counts"], "completed": done - failed, "failed": failed}
    if batch["status"] not in FINAL:
        asked = await store.cancelled(batch["id"])
        if asked is not None:
            batch.update(status="cancelling", cancelling_at=int(asked))
    return batch


async def get_batch(request: Request) -> Response:
    principal = await caller(request)
    batch = await owned(request, "batch", request.path_params["batch_id"], principal)
    try:
        return json(await present(request, batch))
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None


async def list_batches(request: Request) -> Response:
    principal = await caller(request)
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': must be an integer from 1 to 100.", param="limit")
    try:
        batches = await request.app.state.batches.store.list("batch", principal.owner)
        after = request.query_params.get("after")
        if after is not None:
            ids = [b["id"] for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        page = [await present(request, b) for b in batches[:limit]]
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    return json({"object": "list", "data": page, "has_more": len(batches) > limit,
                 "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None})


async def cancel_batch(request: Request) -> Response:
    principal = await caller(request)
    batch = await owned(request, "batch", request.path_params["batch_id"], principal)
    config = request.app.state.manager.current.config.batches
    try:
        if batch["status"] not in FINAL:
            await request.app.state.batches.store.cancel(batch["id"], config.retention_s)
        return json(await present(request, batch))
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None


routes = [
    HTTPRoute("/v1/batches", create_batch, methods=["POST"]),
    HTTPRoute("/v1/batches", list_batches, methods=["GET"]),
    HTTPRoute("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
    HTTPRoute("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]
