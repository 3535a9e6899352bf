"""ChatService over the same pipeline as the HTTP routes: the same `Call`, under the same request record
(metrics and log line), with the gRPC invocation metadata as its headers (so `authorization: Bearer sk-...`
authenticates as on HTTP). The pipeline's HTTP response is converted: a JSON body -> ChatCompletion, an
SSE stream -> ChatCompletionChunk messages. A client that cancels cancels the call's task, and so the
pipeline's await, which frees the backend as an HTTP disconnect does."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.protocol import ChatCompletionRequest, validate_request
from gateway.grpc_api import errors
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes.observed import observed
from gateway.routes.openai import _visible

log = logging.getLogger("llm_gateway")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_INT64_FIELDS = ("seed",)  # protobuf's JSON mapping writes int64 as a string; OpenAI's is a number


async def _identity(aw: Any) -> Any:
    return await aw  # cancellation reaches the pipeline through the call's task itself


def headers_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The invocation metadata as lower-case headers (binary `-bin` entries are not headers)."""
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def body_of(request: Any, stream: bool) -> ChatCompletionRequest:
    data = json_format.MessageToDict(request, preserving_proto_field_name=True)
    for name in _INT64_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = int(data[name])
    data["stream"] = stream
    return validate_request(data, ChatCompletionRequest)


def sse_events(buffer: bytearray) -> list[bytes]:
    """The complete `data:` payloads at the front of `buffer` (consumed); a partial frame stays."""
    out = []
    while True:
        end = buffer.find(b"\n\n")
        if end < 0:
            return out
        frame, buffer[:end + 2] = bytes(buffer[:end]), b""
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(line[5:].strip())


async def chunks_of(body_iterator: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
    """An SSE body -> its JSON chunks, until `data: [DONE]`."""
    buffer = bytearray()
    async for piece in body_iterator:
        buffer += piece.encode() if isinstance(piece, str) else piece
        for data in sse_events(buffer):
            if data == b"[DONE]":
                return
            yield orjson.loads(data)


class ChatServicer:
    """Bound to the app's state (services, runtime manager) at start."""

    def __init__(self, app: Any, pb2: Any) -> None:
        self.app, self.pb2 = app, pb2

    async def _begin(self, context: grpc.aio.ServicerContext) -> tuple[dict[str, str], str]:
        headers = headers_of(context)
        given = headers.get("x-request-id", "")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        await context.send_initial_metadata((("x-request-id", request_id),))
        return headers, request_id

    async def _serve(self, request: Any, context: grpc.aio.ServicerContext, stream: bool) -> tuple[Response, str]:
        headers, request_id = await self._begin(context)

        async def run(rec: RequestRecord) -> Response:
            try:
                body = body_of(request, stream)
            except Exception:
                await self.app.state.services.auth.authenticate(headers)  # anonymous callers get the 401 first
                raise
            rec.stream = body.stream
            call = Call(body, headers, request_id, rec, _identity)
            return await serve(self.app.state.services, self.app.state.manager.current, call)

        return await observed(request_id, ChatCompletionRequest.endpoint, run), request_id

    async def CreateChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response, _ = await self._serve(request, context, stream=False)
            return json_format.ParseDict(orjson.loads(response.body), self.pb2.ChatCompletion(),
                                         ignore_unknown_fields=True)
        except Exception as exc:
            await abort(context, exc)

    async def StreamChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            response, _ = await self._serve(request, context, stream=True)
            if not hasattr(response, "body_iterator"):  # a cached answer replayed whole
                yield json_format.ParseDict(orjson.loads(response.body), self.pb2.ChatCompletionChunk(),
                                            ignore_unknown_fields=True)
                return
            async for chunk in chunks_of(response.body_iterator):
                yield json_format.ParseDict(chunk, self.pb2.ChatCompletionChunk(), ignore_unknown_fields=True)
        except Exception as exc:
            await abort(context, exc)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            principal = await self.app.state.services.auth.authenticate(headers_of(context))
            created = self.app.state.manager.started_at
            data = [{"id": r.name, "object": "model", "created": created, "owned_by": "llm-gateway"}
                    for r in self.app.state.manager.current.route_list if _visible(principal, r)]
            return json_format.ParseDict({"object": "list", "data": data}, self.pb2.ModelList())
        except Exception as exc:
            await abort(context, exc)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for `exc`; the OpenAI body in the trailers and the message."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    code, raw, message = errors.describe(exc)
    if not isinstance(exc, GatewayError):
        log.exception("grpc call failed")  # the log has the trace; the caller only the OpenAI body
    context.set_trailing_metadata((("x-openai-error", raw.decode()),))
    await context.abort(getattr(grpc.StatusCode, code), message)
