"""ChatService over the same pipeline as the HTTP routes: the same `Call`, under the same request record
(metrics and log line), with the gRPC invocation metadata as its headers (so `authorization: Bearer sk-...`
authenticates as on HTTP). The pipeline's HTTP response is converted: a JSON body -> ChatCompletion, an
SSE stream -> ChatCompletionChunk messages. A client that cancels cancels the call's task, and so the
pipeline's await, which frees the backend as an HTTP disconnect does."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
from google.protobuf import json_format
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.protocol import ChatCompletionRequest, validate_request
from gateway.disconnect import ClientDisconnected
from gateway.grpc_api import errors
from gateway.middleware import VALID_REQUEST_ID
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes.observed import observed
from gateway.routes.openai import visible

log = logging.getLogger("llm_gateway")
_INT64_FIELDS = ("seed",)  # protobuf's JSON mapping writes int64 as a string; OpenAI's is a number


async def _until_cancelled(aw: Any) -> Any:
    """A client that cancels cancels the call's task, and so the router's work (its backend is freed as on
    an HTTP disconnect); the request is then recorded as 499, as an HTTP client that left is."""
    try:
        return await aw
    except asyncio.CancelledError:
        raise ClientDisconnected() from None


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
        request_id = given if VALID_REQUEST_ID.match(given.encode()) else uuid.uuid4().hex
        await context.send_initial_metadata((("x-request-id", request_id),))
        return headers, request_id

    async def _serve(self, request: Any, context: grpc.aio.ServicerContext, stream: bool) -> tuple[Response, Call]:
        headers, request_id = await self._begin(context)
        calls: list[Call] = []

        async def run(rec: RequestRecord) -> Response:
            try:
                body = body_of(request, stream)
            except Exception:
                await self.app.state.services.auth.authenticate(headers)  # anonymous callers get the 401 first
                raise
            rec.stream = body.stream
            calls.append(Call(body, headers, request_id, rec, _until_cancelled))
            return await serve(self.app.state.services, self.app.state.manager.current, calls[0])

        return await observed(request_id, ChatCompletionRequest.endpoint, run), calls[0]

    async def CreateChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            response, _ = await self._serve(request, context, stream=False)
            if response.background is not None:
                await response.background()
            return json_format.ParseDict(orjson.loads(response.body), self.pb2.ChatCompletion(),
                                         ignore_unknown_fields=True)
        except Exception as exc:
            await abort(context, exc)

    async def StreamChatCompletion(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        response = None
        try:
            response, call = await self._serve(request, context, stream=True)
            async for chunk in chunks_of(response.body_iterator):
                if "error" in chunk and "choices" not in chunk:  # an in-band error: the stream broke
                    raise stream_error(call, chunk)
                yield json_format.ParseDict(chunk, self.pb2.ChatCompletionChunk(), ignore_unknown_fields=True)
        except Exception as exc:
            await abort(context, exc)
        finally:
            if response is not None:
                await over(response)

    async def ListModels(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            principal = await self.app.state.services.auth.authenticate(headers_of(context))
            created = self.app.state.manager.started_at
            data = [{"id": r.name, "object": "model", "created": created, "owned_by": "llm-gateway"}
                    for r in self.app.state.manager.current.route_list if visible(principal, r)]
            return json_format.ParseDict({"object": "list", "data": data}, self.pb2.ModelList())
        except Exception as exc:
            await abort(context, exc)


def stream_error(call: Call, chunk: dict[str, Any]) -> GatewayError:
    """The error a stream ended with (the router's, with its status), else one built from its frame."""
    if call.outcome is not None and call.outcome.stream_error is not None:
        return call.outcome.stream_error
    err = chunk.get("error") or {}
    return GatewayError(str(err.get("message") or "The stream failed."), status_code=502,
                        error_type=err.get("type"), code=err.get("code"))


async def over(response: Response) -> None:
    """What Starlette does once a streamed response is sent, however it went: the stream's generator is
    closed (it settles usage and finishes the request's record) and the response's background task runs
    (it gives the deployment slot and the concurrency places back)."""
    aclose = getattr(getattr(response, "body_iterator", None), "aclose", None)
    try:
        if aclose is not None:
            await aclose()
    finally:
        if response.background is not None:
            await response.background()


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the call with the status for `exc`; the OpenAI body in the trailers and the message."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if isinstance(exc, ClientDisconnected):  # the client cancelled: nobody to tell, nothing to log
        raise asyncio.CancelledError from None
    code, raw, message = errors.describe(exc)
    if not isinstance(exc, GatewayError):
        log.exception("grpc call failed")  # the log has the trace; the caller only the OpenAI body
    context.set_trailing_metadata((("x-openai-error", raw.decode()),))
    await context.abort(getattr(grpc.StatusCode, code), message)
