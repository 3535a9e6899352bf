"""The OpenAI-compatible surface: chat, legacy completions and models.

Handlers read raw bytes and validate them with pydantic directly (not via
FastAPI's body injection) so a bad body always yields OpenAI's 400 shape with
`param` set. The routing layer picks deployments and fails over; this module
only turns its outcome into an HTTP response with the gateway's headers.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from gateway.disconnect import unless_disconnected
from gateway.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, parse_request
from routing.plan import make_plan
from routing.router import Outcome
from routing.runtime import Route, Runtime

router = APIRouter(prefix="/v1")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(raw, media_type="application/json", headers=headers)


def _runtime(request: Request) -> Runtime:
    return request.app.state.manager.current


async def _serve(request: Request, body: SamplingFields, chat: bool) -> Response:
    started = time.monotonic()
    runtime = _runtime(request)  # this request finishes on this config, whatever reloads happen meanwhile
    plan = make_plan(runtime, body, request.headers)
    rid = request.state.request_id
    work = request.app.state.router.run(plan, body, rid, stream=body.stream, chat=chat)
    outcome: Outcome = await (work if body.stream else unless_disconnected(request, work))
    headers = _gateway_headers(outcome, started)
    if outcome.stream is not None:
        return StreamingResponse(outcome.stream, media_type="text/event-stream", headers={**_SSE_HEADERS, **headers})
    return _json(outcome.body, headers)


def _gateway_headers(outcome: Outcome, started: float) -> dict[str, str]:
    overhead = max(0.0, time.monotonic() - started - outcome.backend_wait_s) * 1000
    headers = {
        "x-gateway-deployment": outcome.deployment,
        "x-gateway-attempts": str(outcome.attempts),
        "x-gateway-overhead-ms": f"{overhead:.2f}",
    }
    if outcome.degraded:
        headers["x-gateway-degraded"] = outcome.degraded
    return headers


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, parse_request(await request.body(), ChatCompletionRequest), chat=True)


@router.post("/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, parse_request(await request.body(), CompletionRequest), chat=False)


def model_object(route: Route, created: int) -> dict[str, Any]:
    """OpenAI's Model object plus facts from the first deployment's model card, which clients may ignore."""
    first = route.deployments[0]
    card = first.backend.card
    obj: dict[str, Any] = {
        "id": route.name,
        "object": "model",
        "created": created,
        "owned_by": card.owned_by if card else "llm-gateway",
        "aliases": route.config.aliases,
        "backend": first.backend.kind,
        "deployments": [d.name for d in route.deployments],
        "strategy": route.config.strategy,
        "context_length": first.context_length,
        "max_model_len": first.context_length,
        "ready": any(d.backend.status().state == "ready" and d.healthy for d in route.deployments),
    }
    if card is not None:
        obj.update(format=card.format, quantization=card.quantization, family=card.family,
                   parameters=card.parameters, license=card.license)
    return obj


@router.get("/models")
async def list_models(request: Request) -> Response:
    runtime = _runtime(request)
    created = request.app.state.manager.started_at
    return _json({"object": "list", "data": [model_object(r, created) for r in runtime.route_list]})


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    runtime = _runtime(request)
    route = runtime.routes.get(model_id)
    if route is None:
        from gateway.errors import ModelNotFound

        raise ModelNotFound(model_id)
    return _json(model_object(route, request.app.state.manager.started_at))
