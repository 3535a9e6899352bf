"""The OpenAI-compatible surface: chat, legacy completions, embeddings and models.

Handlers read raw bytes and validate them with pydantic directly (not via
FastAPI's body injection) so a bad body always yields OpenAI's 400 shape with
`param` set. The routing layer picks deployments and fails over; this module
only turns its outcome into an HTTP response with the gateway's headers (see gateway/pipeline.py).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import Route as HTTPRoute

from backends.contract.errors import ModelNotFound
from backends.contract.protocol import APIRequest, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.auth import Principal
from gateway.disconnect import unless_disconnected
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes.observed import observed, parse_for_caller
from routing.runtime import Route, Runtime

router = APIRouter(prefix="/v1")  # the cheap GET endpoints; the hot POST ones are plain Starlette routes below

def _json(body: Any, headers: dict[str, str] | None = None) -> Response:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Response(raw, media_type="application/json", headers=headers)


def _runtime(request: Request) -> Runtime:
    return request.app.state.manager.current


async def chat_completions(request: Request) -> Response:
    return await _observed(request, ChatCompletionRequest)


async def completions(request: Request) -> Response:
    return await _observed(request, CompletionRequest)


async def embeddings(request: Request) -> Response:
    return await _observed(request, EmbeddingRequest)


# Plain Starlette routes: FastAPI's per-request dependency and response machinery buys nothing here
# (the body is parsed by hand), and it measurably costs on the hot path.
hot_routes = [
    HTTPRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    HTTPRoute("/v1/completions", completions, methods=["POST"]),
    HTTPRoute("/v1/embeddings", embeddings, methods=["POST"]),
]


async def _observed(request: Request, kind: type[APIRequest]) -> Response:
    async def run(rec: RequestRecord) -> Response:
        body = await parse_for_caller(request, kind)
        rec.stream = body.stream
        call = Call(body, request.headers, request.state.request_id, rec, partial(unless_disconnected, request))
        return await serve(request.app.state.services, request.app.state.manager.current, call)

    return await observed(request, kind.endpoint, run)


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
                   parameters=card.parameters, license=card.license, capabilities=card.capabilities)
        if card.embedding is not None:
            obj["dimensions"] = card.embedding.dimensions
    return obj


def visible(principal: Principal, route: Route) -> bool:
    """A key limited to some models sees only those (a route is named by its name or an alias)."""
    allowed = principal.key.models if principal.key else None
    return allowed is None or any(name in allowed for name in (route.name, *route.config.aliases))


@router.get("/models")
async def list_models(request: Request) -> Response:
    svc = request.app.state.services
    principal = await svc.auth.authenticate(request.headers)
    runtime = _runtime(request)
    created = request.app.state.manager.started_at
    return _json({"object": "list", "data": [model_object(r, created) for r in runtime.route_list
                                             if visible(principal, r)]})


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    svc = request.app.state.services
    principal = await svc.auth.authenticate(request.headers)
    runtime = _runtime(request)
    route = runtime.routes.get(model_id)
    if route is None or not visible(principal, route):  # a model the key may not use does not exist for it
        raise ModelNotFound(model_id)
    return _json(model_object(route, request.app.state.manager.started_at))
