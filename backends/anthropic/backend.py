"""Anthropic's Messages API behind the OpenAI chat interface.

The wire translation lives in `translate` (requests, responses,
errors) and `stream` (SSE events), the pass-through of requests that came
in as Messages requests in `native`; this module only does HTTP.
The API key goes into the `x-api-key` header and nowhere else: it is never
logged and is scrubbed from any upstream error message (an HTTP error body or an
in-stream `event: error`), as are the values of the config's `headers` (a custom
auth header is a credential too).

Continuation (mid-stream failover): `ctx.continue_from` becomes an assistant
prefill. Anthropic rejects a prefill that ends in whitespace, so that
whitespace is stripped from the prefill and, if the reply starts by repeating
it, dropped once from the reply; the frames carry only the new text.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, AsyncIterator, Mapping

import aiohttp
import orjson

from backends.anthropic.native import EventCarrier, native_body, with_message
from backends.anthropic.stream import StreamTranslator
from backends.anthropic.translate import (
    apply_params,
    build_body,
    error_from,
    strip_prefill,
    to_chat_completion,
    upstream_error,
)
from backends.base import Backend, BackendState, BackendStatus, CallContext, SSEStream
from backends.contract.errors import GatewayError, InvalidRequest, UpstreamError
from backends.contract.native import ANTHROPIC_MESSAGES
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest
from backends.contract.trace_context import with_trace
from backends.http import UpstreamPool, event_data, event_name, prepend, sse_events, transport_error
from backends.model_cards import ModelCard

log = logging.getLogger("llm_gateway.anthropic")

_NET_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def messages_url(base_url: str) -> str:
    """`https://api.anthropic.com`, `.../v1`, `.../v1/` and `.../v1/messages` all mean the same endpoint."""
    base = base_url.rstrip("/")
    if base.endswith("/v1/messages"):
        return base
    if base.endswith("/v1"):
        base = base[:-3]
    return f"{base}/v1/messages"


class AnthropicBackend(Backend):
    kind = "anthropic"
    supports_continuation = True

    def __init__(self, name: str, card: ModelCard | None, *, base_url: str, model: str, api_key: str | None,
                 pool: UpstreamPool, default_max_tokens: int = 4096, anthropic_version: str = "2023-06-01",
                 required: bool = False, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(name, card, required=required)
        self.model = model
        self.url = messages_url(base_url)
        self.pool = pool
        self.default_max_tokens = default_max_tokens
        extra = dict(headers or {})
        # Scrubbed from every message an upstream sends back: the key, and every extra header's value.
        self._secrets = (api_key, *extra.values())
        # The config's `headers` first: the version, the content type and the key are the gateway's own.
        self._headers = {**extra, "anthropic-version": anthropic_version, "content-type": "application/json"}
        if api_key:
            self._headers["x-api-key"] = api_key
        self._state: BackendState = "loading"

    def __repr__(self) -> str:  # no key in reprs
        return f"AnthropicBackend(name={self.name!r}, model={self.model!r}, url={self.url!r})"

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._state = "ready"

    async def aclose(self) -> None:
        self._state = "stopped"  # the pool belongs to the caller

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, self.kind, self._state, self.required)

    async def probe(self) -> bool:
        """No cheap health endpoint upstream; the router counts failures passively."""
        return True

    # -- OpenAI endpoints ------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> dict[str, Any]:
        native = self._native(request, ctx, stream=False)
        body, skip = (native, "") if native is not None else self._body(request, ctx, stream=False)
        resp = await self._post(body, ctx, request.native_headers(ANTHROPIC_MESSAGES) if native is not None else None)
        try:
            raw = await resp.read()
        except _NET_ERRORS as exc:
            raise transport_error(exc, self.name) from None
        finally:
            resp.release()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict):
            raise UpstreamError(f"The upstream '{self.name}' sent a response that is not a JSON object.",
                                status_code=502)
        if msg.get("type") == "error":  # an error envelope with a 200 status: use the error type's status
            raise error_from(msg.get("error") or {}, secrets=self._secrets)
        chat = to_chat_completion(msg, created=int(time.time()), skip=skip)
        return with_message(chat, msg) if native is not None else chat

    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream:
        native = self._native(request, ctx, stream=True)
        body, skip = (native, "") if native is not None else self._body(request, ctx, stream=True)
        resp = await self._post(body, ctx, request.native_headers(ANTHROPIC_MESSAGES) if native is not None else None)
        translator = StreamTranslator(created=int(time.time()), include_usage=request.include_usage,
                                      fallback_id=uuid.uuid4().hex, fallback_model=self.model, skip=skip,
                                      carrier=EventCarrier() if native is not None else None,
                                      secrets=self._secrets)
        frames = self._frames(resp, translator)
        try:
            first = await frames.__anext__()  # errors before the first token stay HTTP errors
        except BaseException:  # _frames raises rather than ending without a frame
            await frames.aclose()
            raise
        return prepend(first, frames)

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> dict[str, Any]:
        raise self._no_completions()

    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream:
        raise self._no_completions()

    # -- HTTP ------------------------------------------------------------------

    def _no_completions(self) -> InvalidRequest:
        return InvalidRequest(f"The model '{self.name}' does not support /v1/completions; use /v1/chat/completions.",
                              param="model", code="unsupported_endpoint")

    def _native(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> dict[str, Any] | None:
        """The client's own Messages body, when it sent one and this is not a continuation: a continuation
        answers the chat request (its frames join a stream another deployment began)."""
        if ctx.continue_from:
            return None
        return native_body(request, model=self.model, params=ctx.params, stream=stream)

    def _body(self, request: ChatCompletionRequest, ctx: CallContext, *, stream: bool) -> tuple[dict[str, Any], str]:
        """The upstream body, and the whitespace stripped from a continuation prefill."""
        request = apply_params(request, ctx.params)
        prefill, skip = strip_prefill(ctx.continue_from) if ctx.continue_from else ("", "")
        body = build_body(request, model=self.model, default_max_tokens=self.default_max_tokens,
                          prefill=prefill or None, stream=stream)
        return body, skip

    async def _post(self, body: dict[str, Any], ctx: CallContext,
                    extra_headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """POST, returning only a 200 response; anything else is raised as a GatewayError. `extra_headers`
        (a passed-through request's `anthropic-beta`) never replace the deployment's key or version."""
        headers = with_trace({**extra_headers, **self._headers} if extra_headers else self._headers, self.url)
        try:
            resp = await self.pool.session.post(self.url, data=orjson.dumps(body), headers=headers,
                                                timeout=self.pool.timeout(ctx.connect_timeout, ctx.read_timeout))
        except _NET_ERRORS as exc:
            log.warning("%s: request %s failed to connect: %s", self.name, ctx.request_id, type(exc).__name__)
            raise transport_error(exc, self.name) from None
        if resp.status == 200:
            return resp
        try:
            raw = await resp.read()
        except _NET_ERRORS:
            raw = b""
        finally:
            resp.release()
        err = upstream_error(resp.status, raw, resp.headers, upstream=self.name, secrets=self._secrets)
        log.info("%s: request %s got HTTP %d (%s)", self.name, ctx.request_id, resp.status, err.code)
        raise err

    async def _frames(self, resp: aiohttp.ClientResponse, translator: StreamTranslator) -> AsyncIterator[bytes]:
        started = False
        try:
            async for event in sse_events(resp.content):
                data = event_data(event)
                if data is None:
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(f"The upstream '{self.name}' sent a malformed stream event.",
                                        status_code=502) from None
                for frame in translator.feed(event_name(event), obj if isinstance(obj, dict) else {}):
                    started = True
                    yield frame
                if translator.done:
                    return
            raise transport_error(EOFError(), self.name, started=started)
        except GatewayError:
            raise
        except _NET_ERRORS as exc:
            raise transport_error(exc, self.name, started=started) from None
        finally:
            if translator.done:
                resp.release()
            else:
                resp.close()  # never put a half-read connection back in the pool
