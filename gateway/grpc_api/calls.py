"""One gRPC call through the same pipeline as an HTTP request, and back.

    begin (metadata as headers, the request id) -> routed (observed + serve: the same `Call`, record,
    metrics and log line as HTTP; the client's deadline bounds the router) -> unary | stream (the
    pipeline's answer as messages; its `x-*` headers as initial metadata) -> abort (an error's status)

A client that cancels, or whose deadline passes, cancels the handler's task and so the pipeline's await:
the backend is freed as on an HTTP disconnect, and the request is recorded 499 (cancelled) or 504
(deadline). A stream's chunks are the ones the router's assembler parsed already (`Call.keep_chunks`,
one parse per frame); an in-band error frame ends the call with the router's error as its status.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Mapping

import grpc
import orjson
from google.protobuf.message import Message
from starlette.responses import Response

from backends.contract.errors import GatewayError
from backends.contract.protocol import APIRequest
from gateway.disconnect import ClientDisconnected
from gateway.grpc_api import convert, errors
from gateway.grpc_api.gate import Gate
from gateway.middleware import VALID_REQUEST_ID
from gateway.observe import RequestRecord
from gateway.pipeline import Call, serve
from gateway.routes.observed import observed
from gateway.surfaces.reshape import chunk_reader

log = logging.getLogger("llm_gateway")
ToMessage = Callable[[dict[str, Any]], Message]


class DeadlineExceeded(GatewayError):
    """The caller's gRPC deadline passed before the answer was complete (recorded, never sent: the
    client has stopped waiting)."""

    status_code = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"


def headers_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The invocation metadata as lower-case headers (binary `-bin` entries are not headers)."""
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def request_id_of(headers: Mapping[str, str]) -> str:
    given = headers.get("x-request-id", "")
    return given if VALID_REQUEST_ID.match(given.encode()) else uuid.uuid4().hex


def response_metadata(response: Response, request_id: str) -> tuple[tuple[str, str], ...]:
    """The gateway's own headers (deployment, attempts, cache, rate limits, overhead) as gRPC metadata."""
    found = [(k, v) for k, v in response.headers.items() if k.startswith("x-") and k != "x-request-id"]
    return (("x-request-id", request_id), *found)


async def _as_is(work: Any) -> Any:
    return await work  # the handler's task is cancelled by grpc itself when the client goes


def usage_only(chunk: dict[str, Any]) -> bool:
    """The usage chunk the gateway asked the backend for on behalf of a client that did not."""
    return chunk.get("choices") == [] and "usage" in chunk


class GrpcCall:
    """One call: its context, headers and request id; `routed` runs the pipeline."""

    def __init__(self, app: Any, context: grpc.aio.ServicerContext, gate: Gate) -> None:
        self.app, self.context, self.gate = app, context, gate
        self.headers = headers_of(context)
        self.request_id = request_id_of(self.headers)
        remaining = context.time_remaining()
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self.call: Call | None = None

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    async def routed(self, message: Message, kind: type[APIRequest], stream: bool) -> Response:
        async def run(rec: RequestRecord) -> Response:
            try:
                try:
                    body = convert.request_of(message, kind, stream)
                except GatewayError:
                    await self.app.state.services.auth.authenticate(self.headers)  # anonymous: the 401 first
                    raise
                rec.stream = body.stream
                self.call = Call(body, self.headers, self.request_id, rec, _as_is, keep_chunks=body.stream,
                                 deadline=self.deadline)
                return await serve(self.app.state.services, self.app.state.manager.current, self.call)
            except asyncio.CancelledError:
                if self.past_deadline():
                    raise DeadlineExceeded("The call's deadline passed before the answer was complete.") from None
                raise ClientDisconnected() from None

        return await observed(self.request_id, kind.endpoint, run, transport="grpc")

    async def unary(self, message: Message, kind: type[APIRequest], to_message: ToMessage) -> Message:
        entered = False
        try:
            self.gate.enter()
            entered = True
            response = await self.routed(message, kind, stream=False)
            if response.background is not None:
                await response.background()
            await self.context.send_initial_metadata(response_metadata(response, self.request_id))
            return to_message(orjson.loads(response.body))
        except BaseException as exc:
            await self.abort(exc)
            raise  # abort always raises; this line is for the type checker
        finally:
            if entered:
                self.gate.leave()

    async def stream(self, message: Message, kind: type[APIRequest], to_message: ToMessage) -> AsyncIterator[Message]:
        response, entered = None, False
        try:
            self.gate.enter()
            entered = True
            response = await self.routed(message, kind, stream=True)
            await self.context.send_initial_metadata(response_metadata(response, self.request_id))
            assert self.call is not None
            call, rec = self.call, self.call.rec
            read, strip_usage = chunk_reader(call.outcome, rec.deferred), not call.body.include_usage
            async for piece in response.body_iterator:  # type: ignore[attr-defined]
                for chunk in read(piece.encode() if isinstance(piece, str) else piece):
                    if "error" in chunk and "choices" not in chunk:  # an in-band error: the stream broke
                        raise stream_error(call, chunk)
                    if strip_usage and usage_only(chunk):
                        continue
                    yield to_message(chunk)
        except BaseException as exc:
            await self.abort(exc)
        finally:
            try:
                if response is not None:
                    await over(response)
            finally:
                if entered:
                    self.gate.leave()

    async def abort(self, exc: BaseException) -> None:
        """End the call with the status for `exc` (see gateway.grpc_api.errors); always raises."""
        if isinstance(exc, (grpc.aio.AbortError, asyncio.CancelledError)):
            raise exc
        if isinstance(exc, (ClientDisconnected, DeadlineExceeded)):  # nobody waits: nothing to say or log
            raise asyncio.CancelledError from None
        failure = errors.describe(exc)
        if not isinstance(exc, GatewayError):
            log.exception("grpc call failed")  # the log has the trace; the caller only the OpenAI body
        code = getattr(grpc.StatusCode, failure.code)
        trailers = (("x-request-id", self.request_id), ("x-openai-error", failure.openai_json.decode()),
                    ("grpc-status-details-bin", errors.status_details(failure, code.value[0], self.request_id)))
        await self.context.abort(code, failure.message, trailing_metadata=trailers)


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
