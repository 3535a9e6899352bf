"""Any OpenAI-compatible upstream: OpenAI itself, or a compatible service at a `base_url`.

The request body goes out nearly as the client sent it (the model name and
any deployment overrides replaced); successful bodies and stream events come
back as bytes, untouched. Only errors are parsed, to normalise them, and each
stream event is checked for an in-band `{"error": ...}` and for `[DONE]`, so
a truncated stream is never passed off as complete.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping

import aiohttp
import orjson

from backends.base import Backend, BackendStatus, Body, CallContext, SSEStream
from backends.contract.errors import GatewayError, StreamInterrupted, UpstreamError, _type_for
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from backends.contract.trace_context import with_trace
from backends.http import UpstreamPool, event_data, parse_retry_after, prepend, sse_batches, transport_error
from backends.model_cards import ModelCard
from backends.scrub import scrub

# What OpenAI's own API accepts; anything else (vLLM or llama.cpp extras) is dropped
# for kinds "openai" and "azure", because both answer unknown parameters with a 400.
OPENAI_FIELDS = frozenset({
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop",
    "seed", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "stream",
    "stream_options", "user", "response_format", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "metadata", "store", "service_tier", "reasoning_effort", "modalities", "audio", "prediction",
    "verbosity", "web_search_options", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options",
    "safety_identifier", "moderation", "echo", "suffix", "best_of",
})  # tests/backends/test_openai_allow_list.py holds it equal to the installed openai SDK's parameters
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
STRICT_KINDS = frozenset({"openai", "azure"})  # sent only the fields above: both answer others with a 400


class OpenAICompatBackend(Backend):
    kind = "openai"
    filters_events = False  # does `skip_event` drop anything? (checked first: most kinds drop nothing)

    def __init__(self, name: str, card: ModelCard | None, *, base_url: str, model: str, api_key: str | None,
                 pool: UpstreamPool, health_path: str | None = None, required: bool = False,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(name, card, required=required)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.pool = pool
        self.health_path = health_path
        extra = dict(headers or {})  # the config's `headers` (routing/upstream_headers.py refuses managed ones)
        self._headers = {**extra, "Content-Type": "application/json", "Accept": "application/json"}
        # Scrubbed from every message an upstream sends back: the key, and every extra header's value.
        self._secrets = (api_key, *extra.values())
        if api_key:
            self._headers.update(self.auth_headers(api_key))

    def auth_headers(self, api_key: str) -> dict[str, str]:
        """How this kind of upstream takes its key."""
        return {"Authorization": f"Bearer {api_key}"}

    def __repr__(self) -> str:  # never the headers: they hold credentials
        return f"{type(self).__name__}(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the pool belongs to the provider and outlives deployments

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, self.kind, "ready", self.required)

    async def probe(self) -> bool:
        if not self.health_path:
            return True
        return await self._get_ok(self._url(self.health_path))

    # -- requests ----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def build_body(self, request: SamplingFields, ctx: CallContext, stream: bool) -> dict[str, Any]:
        body = request.wire_body()
        if self.kind in STRICT_KINDS:
            body = {k: v for k, v in body.items() if k in OPENAI_FIELDS}
        body.update(ctx.params)
        body["model"] = self.model
        body["stream"] = stream
        if not stream:
            body.pop("stream_options", None)
        return body

    async def _post(self, path: str, body: dict[str, Any], ctx: CallContext) -> aiohttp.ClientResponse:
        url = self._url(path)
        try:
            resp = await self.pool.session.post(
                url, data=orjson.dumps(body), headers=with_trace(self._headers, url),
                timeout=self.pool.timeout(ctx.connect_timeout, ctx.read_timeout))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, self.name) from None
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise transport_error(exc, self.name) from None
            finally:
                resp.release()
            raise self.normalise_error(resp.status, raw, resp.headers)
        return resp

    async def _json(self, path: str, body: dict[str, Any], ctx: CallContext) -> bytes:
        resp = await self._post(path, body, ctx)
        try:
            return await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, self.name) from None
        finally:
            resp.release()

    async def _stream(self, path: str, body: dict[str, Any], ctx: CallContext) -> SSEStream:
        resp = await self._post(path, body, ctx)
        events = self._relay(resp)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise StreamInterrupted(f"The upstream '{self.name}' sent an empty stream.") from None
        return prepend(first, events)

    async def _relay(self, resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """Pass events through as bytes, those of one read together; raise on in-band errors and on
        streams that end without [DONE]."""
        done = False
        try:
            async for batch in sse_batches(resp.content):
                out: list[bytes] = []
                for event in batch:
                    data = event_data(event)
                    if data is None or (self.filters_events and self.skip_event(data)):
                        continue  # comments and keep-alives are not forwarded
                    if data.startswith(b"[DONE]"):
                        done = True
                        out.append(b"data: [DONE]\n\n")
                        break
                    if data.startswith(b'{"error"') or (b'"error"' in data[:32] and data.lstrip().startswith(b"{")):
                        if out:
                            yield b"".join(out)  # what came before the error still reaches the client
                        raise self.in_band_error(data)
                    out.append(event)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
                if done:
                    break
        except GatewayError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise transport_error(exc, self.name, started=True) from None
        finally:
            resp.close() if not done else resp.release()
        if not done:
            raise StreamInterrupted(f"The stream from '{self.name}' ended without [DONE].")

    def skip_event(self, data: bytes) -> bool:
        """Is this event's payload one to leave out of the stream (an upstream's own annotation)?"""
        return False

    # -- errors ------------------------------------------------------------------

    def normalise_error(self, status: int, raw: bytes, headers: Any) -> UpstreamError:
        """OpenAI's `{"error": {...}}`; vLLM's integer `code`, nested or flat, is mapped to a string or null."""
        retry_after = parse_retry_after(headers)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(body, dict) and not isinstance(err, dict) and "message" in body:
            err = body  # vLLM's old flat shape: {"object": "error", "message", "type", "param", "code"}
        if not isinstance(err, dict):
            text = scrub(raw[:200].decode("utf-8", "replace").strip(), self._secrets) or f"HTTP {status}"
            return UpstreamError(f"The upstream '{self.name}' answered {status}: {text}", status_code=status,
                                 retry_after=retry_after)
        code = err.get("code")
        message = scrub(str(err.get("message") or f"HTTP {status}"), self._secrets)
        return UpstreamError(
            message, status_code=status,
            error_type=_openai_type(err.get("type"), status),
            code=code if isinstance(code, str) else _context_code(status, message),
            param=err.get("param") if isinstance(err.get("param"), str) else None,
            retry_after=retry_after,
        )

    def in_band_error(self, data: bytes) -> UpstreamError:
        try:
            err = orjson.loads(data).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            err = {}
        status = err.get("code") if isinstance(err.get("code"), int) else 500
        return UpstreamError(scrub(str(err.get("message") or "The upstream failed mid-stream."), self._secrets),
                             status_code=status,
                             code=err.get("code") if isinstance(err.get("code"), str) else "upstream_error")

    async def _get_ok(self, url: str) -> bool:
        try:
            async with self.pool.session.get(url, headers=self._headers,
                                             timeout=aiohttp.ClientTimeout(total=self.pool.settings.connect_timeout_s)) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    # -- the interface -----------------------------------------------------------

    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> Body:
        return await self._json("/chat/completions", self.chat_body(request, ctx, False), ctx)

    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream:
        return await self._stream("/chat/completions", self.chat_body(request, ctx, True), ctx)

    async def completion(self, request: CompletionRequest, ctx: CallContext) -> Body:
        return await self._json("/completions", self.build_body(request, ctx, False), ctx)

    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream:
        return await self._stream("/completions", self.build_body(request, ctx, True), ctx)

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, stream: bool) -> dict[str, Any]:
        return self.build_body(request, ctx, stream)

    async def embeddings(self, request: EmbeddingRequest, ctx: CallContext) -> Body:
        """The body as sent (model and overrides replaced, never a `stream`); the answer's bytes untouched."""
        body = request.wire_body()
        body.pop("stream", None)
        if self.kind in STRICT_KINDS:
            body = {k: v for k, v in body.items() if k in EMBEDDING_FIELDS}
        body.update(ctx.params)
        body["model"] = self.model
        return await self._json("/embeddings", body, ctx)


def _openai_type(upstream_type: Any, status: int) -> str:
    if isinstance(upstream_type, str) and upstream_type.endswith("_error"):
        return upstream_type
    return _type_for(status)


def _context_code(status: int, message: str) -> str | None:
    """vLLM says a prompt is too long only in words ("This model's maximum context length is N tokens. ..."),
    with an integer code: named here as OpenAI names it, so the router can look for a larger context."""
    return "context_length_exceeded" if status == 400 and "maximum context length" in message else None
