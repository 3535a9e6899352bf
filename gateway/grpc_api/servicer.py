"""The gateway's gRPC services, each RPC one line over `GrpcCall` (gateway/grpc_api/calls.py): the same
pipeline as the HTTP route of the same name, with the request and answer converted (convert.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc

from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.grpc_api import convert
from gateway.grpc_api.calls import GrpcCall
from gateway.grpc_api.gate import Gate
from gateway.routes.openai import visible


class _Servicer:
    """Bound to the app (its services and runtime manager) and the generated message classes."""

    def __init__(self, app: Any, pb: Any, gate: Gate) -> None:
        self.app, self.pb, self.gate = app, pb, gate

    def call(self, context: grpc.aio.ServicerContext) -> GrpcCall:
        return GrpcCall(self.app, context, self.gate)


class ChatServicer(_Servicer):
    async def CreateChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.call(context).unary(request, ChatCompletionRequest,
                                              partial(convert.chat_completion, pb2=self.pb))

    async def StreamChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for chunk in self.call(context).stream(request, ChatCompletionRequest,
                                                     partial(convert.chat_chunk, pb2=self.pb)):
            yield chunk

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = self.call(context)
        try:
            principal = await self.app.state.services.auth.authenticate(call.headers)
            manager = self.app.state.manager
            data = [{"id": r.name, "object": "model", "created": manager.started_at, "owned_by": "llm-gateway"}
                    for r in manager.current.route_list if visible(principal, r)]
            return convert.message_of({"object": "list", "data": data}, self.pb.ModelList)
        except BaseException as exc:
            await call.abort(exc)


class CompletionServicer(_Servicer):
    async def CreateCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.call(context).unary(request, CompletionRequest,
                                              partial(convert.message_of, cls=self.pb.Completion))

    async def StreamCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for chunk in self.call(context).stream(request, CompletionRequest,
                                                     partial(convert.message_of, cls=self.pb.Completion)):
            yield chunk


class EmbeddingServicer(_Servicer):
    async def CreateEmbedding(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.call(context).unary(request, EmbeddingRequest, partial(convert.embeddings, pb2=self.pb))


SERVICERS = {"ChatService": ChatServicer, "CompletionService": CompletionServicer,
             "EmbeddingService": EmbeddingServicer}
