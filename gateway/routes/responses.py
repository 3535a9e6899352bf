"""The Responses API: `POST /v1/responses` and `GET`/`DELETE /v1/responses/{id}`.

A Responses request is translated to a chat request (gateway.surfaces.responses) and served by the one
pipeline, so auth, limits, budgets, the cache, routing, failover and continuation, usage and cost are
those of chat completions; the answer is translated back on its way out. With `store` (the default, as
on OpenAI) the response and its conversation are kept for `previous_response_id`, owned by the key
that made them.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, AsyncIterator, Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from backends.contract.errors import GatewayError, InvalidRequest, NotFound
from backends.contract.protocol import ChatCompletionRequest, validate_request
from gateway.auth import Principal
from gateway.disconnect import unless_disconnected
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.response_store import StoredResponse
from gateway.routes.observed import observed, parse_for_caller
from gateway.services import Services
from gateway.store_errors import StoreUnavailable, unavailable
from gateway.surfaces.reshape import chunk_reader, reshape
from gateway.surfaces.responses import stream as response_stream
from gateway.surfaces.responses import translate
from gateway.surfaces.responses.protocol import ResponsesRequest
from routing.runtime import Runtime


async def create_response(request: Request) -> Response:
    return await observed(request, "responses", partial(_create, request))


async def _create(request: Request, rec: RequestRecord) -> Response:
    req: ResponsesRequest = await parse_for_caller(request, ResponsesRequest)
    make_call = partial(_http_call, request, rec, req.stream)
    return await respond(request.app.state.services, request.app.state.manager.current, req, rec, make_call,
                         partial(request.app.state.services.auth.authenticate, request.headers))


def _http_call(request: Request, rec: RequestRecord, stream: bool, chat: ChatCompletionRequest) -> Call:
    return Call(chat, request.headers, request.state.request_id, rec, partial(unless_disconnected, request),
                keep_chunks=stream)


async def respond(svc: Services, runtime: Runtime, req: ResponsesRequest, rec: RequestRecord,
                  make_call: Callable[[ChatCompletionRequest], Call],
                  caller: Callable[[], Awaitable[Principal]]) -> Response:
    """A validated Responses request served as chat and answered as a Response (or its events): the
    route's work, and a batch line's (gateway.batches.runner), which differ only in how the `Call` is
    made (`make_call(chat)`: headers, disconnects, the preset key and class) and in who the caller is
    (`caller()`: the request's key, or the batch's). Errors a translation finds are shown only to a
    caller who may call, as an invalid body is."""
    rec.stream = req.stream
    history: list[dict[str, Any]] = []
    if req.previous_response_id:  # read as its owner; a plain request is authenticated in the pipeline
        history = (await _stored(svc, req.previous_response_id, await caller(),
                                 param="previous_response_id")).conversation
    try:
        chat_body, conversation = translate.to_chat(req, history)
        chat = validate_request(chat_body, ChatCompletionRequest)
    except GatewayError:
        await caller()
        raise
    call = make_call(chat)
    answer = await serve(svc, runtime, call)
    resp_id, created_at = translate.new_id("resp"), int(time.time())
    ttl_s = runtime.config.responses.store_ttl_s

    async def keep(response: dict[str, Any]) -> None:
        if req.store and call.principal is not None:
            await _keep(svc, response, conversation, call.principal, ttl_s, translate.input_items(req.input))

    async def body(chat_result: dict[str, Any]) -> dict[str, Any]:
        response = translate.from_chat(req, resp_id, created_at, chat_result)
        await keep(response)
        return response

    def events(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        state = response_stream.ResponseEvents(req, resp_id, created_at)
        return response_stream.events(frames, state, chunk_reader(call.outcome, rec.deferred), keep)

    return await reshape(answer, body, events)


async def _keep(svc: Services, response: dict[str, Any], conversation: list[dict[str, Any]], principal: Principal,
                ttl_s: float, items: list[dict[str, Any]]) -> None:
    """Store a finished response; a Redis outage loses the record, never the answer."""
    reply = translate.assistant_message(response["output"])
    record = StoredResponse(response, [*conversation, *([reply] if reply else [])], principal.owner, items)
    try:
        await svc.responses.put(response["id"], record, ttl_s)
    except StoreUnavailable as exc:
        svc.link.record_error(exc)


async def _stored(svc: Services, response_id: str, principal: Principal, *, param: str | None = None
                  ) -> StoredResponse:
    try:
        record = await svc.responses.get(response_id, principal.owner)
    except StoreUnavailable as exc:
        svc.link.record_error(exc)
        raise unavailable("Stored responses cannot be read") from None
    if record is None:
        message = f"Previous response with id '{response_id}' not found." if param else \
            f"No response found with id '{response_id}'."
        if param:
            raise InvalidRequest(message, param=param, code="previous_response_not_found")
        raise NotFound(message, code="response_not_found")
    return record


async def get_response(request: Request) -> Response:
    svc: Services = request.app.state.services
    principal = await svc.auth.authenticate(request.headers)
    record = await _stored(svc, request.path_params["response_id"], principal)
    return Response(orjson.dumps(record.response), media_type="application/json")


async def list_input_items(request: Request) -> Response:
    """The stored response's input items, newest first unless `order=asc`, `limit` (1-100) after `after`."""
    svc: Services = request.app.state.services
    principal = await svc.auth.authenticate(request.headers)
    record = await _stored(svc, request.path_params["response_id"], principal)
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': must be 'asc' or 'desc'.", param="order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("Invalid value for 'limit': must be an integer from 1 to 100.", param="limit")
    items = record.input_items if order == "asc" else record.input_items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return Response(orjson.dumps({"object": "list", "data": page, "has_more": len(items) > limit,
                                  "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None}), media_type="application/json")


async def delete_response(request: Request) -> Response:
    svc: Services = request.app.state.services
    principal = await svc.auth.authenticate(request.headers)
    response_id = request.path_params["response_id"]
    await _stored(svc, response_id, principal)
    try:
        await svc.responses.delete(response_id, principal.owner)
    except StoreUnavailable as exc:
        svc.link.record_error(exc)
        raise unavailable("Stored responses cannot be changed") from None
    return Response(orjson.dumps({"id": response_id, "object": "response", "deleted": True}),
                    media_type="application/json")


hot_routes = [HTTPRoute("/v1/responses", create_response, methods=["POST"])]  # in the fast lane, as chat is
routes = [
    HTTPRoute("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    HTTPRoute("/v1/responses/{response_id}", get_response, methods=["GET"]),
    HTTPRoute("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]
