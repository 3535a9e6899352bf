"""Anthropic's Messages API as input: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A Messages request is translated to a chat request (gateway.surfaces.messages) and served by the one
pipeline, whatever the route's backends are (local, vLLM, OpenAI, Anthropic), so auth (`x-api-key` or
`Authorization`), limits, budgets, the cache, failover and continuation, usage and cost are those of
chat completions. An Anthropic deployment gets the request exactly as the client sent it, and its own
message or events come back unchanged (backends.contract.native). Every error, before or during a stream, is in Anthropic's shape, so the `anthropic`
SDK raises its own error types.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from backends.contract.errors import GatewayError
from backends.contract.native import ANTHROPIC_MESSAGES
from backends.contract.protocol import ChatCompletionRequest, validate_request
from gateway.auth import authorize_model
from gateway.disconnect import unless_disconnected
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes.observed import observed, parse_for_caller
from gateway.services import Services
from gateway.surfaces.messages import stream as message_stream
from gateway.surfaces.messages import translate
from gateway.surfaces.messages.protocol import CountTokensRequest, MessagesRequest
from gateway.surfaces.reshape import chunk_reader, reshape
from routing.plan import make_plan

_LONG_PROMPT = 4_000  # rough tokens; counting more than this runs off the event loop


def anthropic_error(request: Request, exc: GatewayError) -> Response:
    headers = {**exc.headers, "request-id": getattr(request.state, "request_id", "-")}
    return Response(orjson.dumps(translate.error_body(exc)), status_code=exc.status_code,
                    media_type="application/json", headers=headers)


async def create_message(request: Request) -> Response:
    try:
        response = await observed(request, "messages", partial(_create, request))
    except GatewayError as exc:
        return anthropic_error(request, exc)
    response.headers["request-id"] = request.state.request_id
    return response


async def _chat_request(request: Request, kind: type[CountTokensRequest]) -> tuple[Any, ChatCompletionRequest]:
    """(the Messages request, its chat translation); a bad body is shown only to a caller who may call."""
    req = await parse_for_caller(request, kind)
    try:
        chat = validate_request(translate.to_chat(req), ChatCompletionRequest)
    except GatewayError:
        await request.app.state.services.auth.authenticate(request.headers)
        raise
    return req, chat


async def _create(request: Request, rec: RequestRecord) -> Response:
    svc: Services = request.app.state.services
    req, chat = await _chat_request(request, MessagesRequest)
    # An Anthropic deployment takes the request as it came, beta features included.
    beta = request.headers.get("anthropic-beta")
    chat.with_native(ANTHROPIC_MESSAGES, req._raw, {"anthropic-beta": beta} if beta else None)
    rec.stream = req.stream
    call = Call(chat, request.headers, request.state.request_id, rec, partial(unless_disconnected, request),
                keep_chunks=req.stream)
    answer = await serve(svc, request.app.state.manager.current, call)

    async def body(chat_result: dict[str, Any]) -> dict[str, Any]:
        return translate.from_chat(req, chat_result)

    def events(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return message_stream.events(frames, message_stream.MessageEvents(req), chunk_reader(call.outcome, rec.deferred))

    return await reshape(answer, body, events)


async def count_tokens(request: Request) -> Response:
    try:
        return await observed(request, "messages.count_tokens", partial(_count, request))
    except GatewayError as exc:
        return anthropic_error(request, exc)


async def _count(request: Request, rec: RequestRecord) -> Response:
    """The prompt's tokens by the route's first deployment's own tokenizer (a local model's, else tiktoken)."""
    svc: Services = request.app.state.services
    _, chat = await _chat_request(request, CountTokensRequest)
    principal = await svc.auth.authenticate(request.headers)
    runtime = request.app.state.manager.current
    plan = make_plan(runtime, chat, request.headers, principal.tier)
    rec.route = plan.route.name
    authorize_model(principal, plan.route.name, chat.model)
    counted = await asyncio.to_thread(plan.tokens.counted) if plan.tokens.rough > _LONG_PROMPT else plan.tokens.counted()
    return Response(orjson.dumps({"input_tokens": counted}), media_type="application/json",
                    headers={"request-id": request.state.request_id})


hot_routes = [  # in the fast lane, as chat is
    HTTPRoute("/v1/messages", create_message, methods=["POST"]),
    HTTPRoute("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
