"""The OpenAI-compatible surface: chat, legacy completions and models.

Handlers read raw bytes and validate them with pydantic directly (not via
FastAPI's body injection) so a bad body always yields OpenAI's 400 shape with
`param` set, and the hot path skips a layer.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.disconnect import unless_disconnected
from gateway.protocol import ChatCompletionRequest, CompletionRequest, parse_request
from gateway.registry import ModelRegistry

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: object) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = parse_request(await request.body(), ChatCompletionRequest)
    backend = _registry(request).resolve(body.model)
    rid = request.state.request_id
    if body.stream:
        stream = await backend.chat_stream(body, rid)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
    return _json(await unless_disconnected(request, backend.chat(body, rid)))


@router.post("/completions")
async def completions(request: Request) -> Response:
    body = parse_request(await request.body(), CompletionRequest)
    backend = _registry(request).resolve(body.model)
    rid = request.state.request_id
    if body.stream:
        stream = await backend.completion_stream(body, rid)
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
    return _json(await unless_disconnected(request, backend.completion(body, rid)))


@router.get("/models")
async def list_models(request: Request) -> Response:
    registry = _registry(request)
    return _json({"object": "list", "data": [registry.model_object(b) for b in registry.backends]})


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    registry = _registry(request)
    return _json(registry.model_object(registry.resolve(model_id)))
