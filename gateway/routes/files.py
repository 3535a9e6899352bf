"""The Files API: `POST /v1/files` (purpose `batch`, JSONL), `GET /v1/files`, `GET` and `DELETE
/v1/files/{id}`, `GET /v1/files/{id}/content`. A file belongs to the key that uploaded it; to any other
key it does not exist. A batch file is checked line by line at upload (gateway.batches.jsonl)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from backends.contract.errors import GatewayError, InvalidRequest, NotFound
from gateway.auth import Principal
from gateway.batches.jsonl import parse_lines
from gateway.store_errors import StoreUnavailable
from gateway.store_errors import unavailable as store_unavailable

PURPOSES = ("batch",)  # what this gateway keeps files for


def unavailable(exc: StoreUnavailable, request: Request) -> GatewayError:
    request.app.state.services.link.record_error(exc)
    return store_unavailable("Files and batches cannot be reached")


def json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def caller(request: Request) -> Principal:
    return await request.app.state.services.auth.authenticate(request.headers)


async def owned(request: Request, kind: str, obj_id: str, principal: Principal) -> dict[str, Any]:
    """The caller's object, or a 404 (also for another key's)."""
    try:
        found = await request.app.state.batches.store.get(kind, obj_id)
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    if found is None or found[1] != principal.owner:
        raise NotFound(f"No such {'File' if kind == 'file' else 'Batch'} object: {obj_id}", param="id",
                       code=f"{kind}_not_found")
    return found[0]


async def upload(request: Request) -> Response:
    principal = await caller(request)
    config = request.app.state.manager.current.config.batches
    try:
        form = await request.form(max_files=1, max_fields=8, max_part_size=config.max_file_bytes)
    except Exception as exc:  # starlette's MultiPartException and friends: the client's form is malformed
        raise InvalidRequest(f"The upload must be multipart/form-data with 'file' and 'purpose': {exc}",
                             param="file", code="invalid_upload") from None
    try:
        purpose = form.get("purpose")
        upload_file = form.get("file")
        if purpose not in PURPOSES:
            raise InvalidRequest(f"Invalid value for 'purpose': this gateway keeps files for {', '.join(PURPOSES)} "
                                 "only.", param="purpose", code="invalid_purpose")
        if not isinstance(upload_file, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'.", param="file",
                                 code="missing_required_parameter")
        data = await upload_file.read()
        filename = upload_file.filename or "upload.jsonl"
    finally:
        await form.close()
    if len(data) > config.max_file_bytes:
        raise InvalidRequest(f"The file is larger than {config.max_file_bytes} bytes.", param="file",
                             code="file_too_large")
    if not filename.endswith(".jsonl"):
        raise InvalidRequest("A batch file must be JSONL (a name ending in .jsonl).", param="file",
                             code="invalid_file_format")
    if len(data) > 1_000_000:  # checking a large file takes a while: never on the event loop
        await asyncio.to_thread(parse_lines, data, config.max_lines)
    else:
        parse_lines(data, config.max_lines)
    runner = request.app.state.batches.runner
    try:
        obj = await runner.write_file(data, filename, principal.owner, "batch")
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    return json(obj)


async def list_files(request: Request) -> Response:
    principal = await caller(request)
    try:
        files = await request.app.state.batches.store.list("file", principal.owner)
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    purpose = request.query_params.get("purpose")
    if purpose:
        files = [f for f in files if f["purpose"] == purpose]
    return json({"object": "list", "data": files, "has_more": False,
                 "first_id": files[0]["id"] if files else None, "last_id": files[-1]["id"] if files else None})


async def get_file(request: Request) -> Response:
    principal = await caller(request)
    return json(await owned(request, "file", request.path_params["file_id"], principal))


async def delete_file(request: Request) -> Response:
    principal = await caller(request)
    file_id = request.path_params["file_id"]
    await owned(request, "file", file_id, principal)
    state = request.app.state.batches
    try:
        await state.store.delete("file", file_id, principal.owner)
    except StoreUnavailable as exc:
        raise unavailable(exc, request) from None
    await state.blobs.delete(file_id)
    return json({"id": file_id, "object": "file", "deleted": True})


async def file_content(request: Request) -> Response:
    principal = await caller(request)
    file_id = request.path_params["file_id"]
    await owned(request, "file", file_id, principal)
    data = await request.app.state.batches.blobs.get(file_id)
    if data is None:
        raise NotFound(f"The content of file {file_id} is gone.", param="id", code="file_not_found")
    return Response(data, media_type="application/octet-stream")


routes = [
    HTTPRoute("/v1/files", upload, methods=["POST"]),
    HTTPRoute("/v1/files", list_files, methods=["GET"]),
    HTTPRoute("/v1/files/{file_id}", get_file, methods=["GET"]),
    HTTPRoute("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    HTTPRoute("/v1/files/{file_id}/content", file_content, methods=["GET"]),
]
