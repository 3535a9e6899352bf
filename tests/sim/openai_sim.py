"""Simulated OpenAI API (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``).

Faithful to the wire format the official SDK parses (protocols.md section 1):
error envelope with a string ``code``, SSE ``data:`` chunks sharing id/created,
the ``choices: []`` usage chunk, ``data: [DONE]`` and in-band ``{"error": ...}``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import uuid
from typing import Any

from aiohttp import web

from tests.sim.base import SimServer
from tests.sim.faults import Fault
from tests.sim.text import Plan, canonical_reply, count_words, plan_reply, prompt_tokens
from tests.sim.tools import argument_pieces, due_call
from tests.sim.wire import BODY, BODY_OK, StreamEvent, open_stream, send_stream, sse_data

# status -> (type, code) as OpenAI sends them.
_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout_error", "timeout"),
    409: ("invalid_request_error", "conflict"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("service_unavailable_error", "service_unavailable"),
}
_MESSAGES: dict[int, str] = {
    401: "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    404: "The model does not exist or you do not have access to it.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


class OpenAISim(SimServer):
    """OpenAI-compatible upstream; a trailing assistant message is plain history here."""

    model_paths = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
    embedding_dimensions = 64  # the native size of the simulated model's vectors

    def __init__(
        self, name: str = "openai", port: int = 0, *, model_name: str = "sim-model",
        api_key: str | None = None, strict_model: bool = False,
    ) -> None:
        super().__init__(name, port)
        self.model_name = model_name
        self.api_key = api_key
        self.strict_model = strict_model  # 404 when the request names another model
        # Prompts of more words than this get the protocol's 400 context_length_exceeded (None: any length).
        self.context_window: int | None = None
        self.reply_override: str | None = None  # answer every chat with this text (a model that answers otherwise)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)

    # ------------------------------------------------------------ errors
    def error(self, status: int, message: str | None = None, *, err_type: str | None = None,
              code: str | None = None, param: str | None = None) -> web.Response:
        """An error in OpenAI's envelope (string ``code``)."""
        t, c = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        err = {"message": message or _MESSAGES.get(status, f"Error {status}"), "type": err_type or t,
               "param": param, "code": code if code is not None else c}
        return web.json_response({"error": err}, status=status)

    def fault_error(self, code: int, message: str | None) -> web.Response:
        return self.error(code, message)

    def auth_error(self) -> web.Response:
        return self.error(401, code="invalid_api_key", err_type="invalid_request_error")

    def context_error(self, window: int, used: int) -> web.Response:
        """OpenAI's answer to a prompt longer than the model's context."""
        return self.error(400, f"This model's maximum context length is {window} tokens. However, your messages "
                          f"resulted in {used} tokens. Please reduce the length of the messages.",
                          code="context_length_exceeded", param="messages")

    def too_long(self, used: int) -> web.Response | None:
        window = self.context_window
        return self.context_error(window, used) if window is not None and used > window else None

    def in_band_error(self, message: str | None) -> bytes:
        """The SSE event carrying a mid-stream error."""
        return sse_data({"error": {"message": message or _MESSAGES[500], "type": "server_error",
                                   "param": None, "code": "internal_error"}})

    # ------------------------------------------------------------- hooks
    def reply_text(self, body: dict[str, Any]) -> str:
        """The full reply for a chat body (VLLMSim adds continuation)."""
        return self.reply_override if self.reply_override is not None else canonical_reply(body["messages"])

    def validate_chat(self, body: dict[str, Any]) -> web.Response | None:
        return None

    def include_usage(self, body: dict[str, Any]) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and bool(opts.get("include_usage"))

    def choice_extra(self, plan: Plan) -> dict[str, Any]:
        """Non-OpenAI fields added to each finished choice."""
        return {}

    def body_extra(self) -> dict[str, Any]:
        """Non-OpenAI top-level fields of a non-streamed chat or completion answer (AzureSim's filter results)."""
        return {}

    def stream_prologue(self) -> list[StreamEvent]:
        """Events of the upstream's own before a stream's first chunk (AzureSim's prompt annotations)."""
        return []

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 1700000000, "owned_by": "openai"}

    def authorized(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    # ---------------------------------------------------------- handlers
    async def _prologue(self, request: web.Request) -> tuple[dict[str, Any], Fault | None, web.StreamResponse | None]:
        fault = self.take_fault()
        early = await self.apply_fault(request, fault)
        if early is not None:
            return {}, fault, early
        if not self.authorized(request):
            return {}, fault, self.auth_error()
        body = request[BODY]
        if not request[BODY_OK] or not isinstance(body, dict):
            return {}, fault, self.error(400, "We could not parse the JSON body of your request. (HINT: This likely "
                                         "means you aren't using your HTTP library correctly.)")
        if self.strict_model and body.get("model") != self.model_name:
            msg = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return body, fault, self.error(404, msg, code="model_not_found")
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or not 1 <= n <= 128):
            return body, fault, self.error(400, f"{n!r} is not valid for 'n'", param="n")
        return body, fault, None

    def _usage(self, prompt: int, completion: int) -> dict[str, int]:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self.error(400, "Missing required parameter: 'messages'.", param="messages",
                              code="missing_required_parameter")
        bad = self.validate_chat(body) or self.too_long(prompt_tokens(messages))
        if bad is not None:
            return bad
        limit = body.get("max_completion_tokens")
        plan = plan_reply(self.reply_text(body), limit if limit is not None else body.get("max_tokens"), body.get("stop"))
        return await self._answer(request, body, fault, plan, prompt_tokens(messages), chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        prompt = body.get("prompt")
        if prompt is None or prompt == "" or prompt == []:
            return self.error(400, "Missing required parameter: 'prompt'.", param="prompt",
                              code="missing_required_parameter")
        bad = self.too_long(_prompt_count(prompt))
        if bad is not None:
            return bad
        plan = plan_reply(canonical_reply(prompt), body.get("max_tokens", 16), body.get("stop"))
        return await self._answer(request, body, fault, plan, _prompt_count(prompt), chat=False)

    async def _answer(self, request: web.Request, body: dict[str, Any], fault: Fault | None, plan: Plan,
                      ptoks: int, chat: bool) -> web.StreamResponse:
        n = body.get("n") or 1
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_name, "system_fingerprint": None}
        if body.get("stream"):
            return await self._stream(request, body, fault, plan, ptoks, chat, n, head)
        dropped = await self.nonstream_fault(request, fault, len(plan.pieces))
        if dropped is not None:
            return dropped
        head.update(self.body_extra())
        text = plan.text
        call = due_call(body) if chat else None
        if call is not None:
            message = {"role": "assistant", "content": None, "refusal": None,
                       "tool_calls": [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function", "function": call}]}
            ctoks = len(argument_pieces(call["arguments"]))
            return web.json_response({**head, "choices": [{"index": 0, "message": message, "logprobs": None,
                                                           "finish_reason": "tool_calls"}],
                                      "usage": self._usage(ptoks, ctoks)})
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {"index": i}
            if chat:
                choice["message"] = {"role": "assistant", "content": text, "refusal": None}
            else:
                choice["text"] = text
            choice.update({"logprobs": None, "finish_reason": plan.finish, **self.choice_extra(plan)})
            choices.append(choice)
        return web.json_response({**head, "choices": choices, "usage": self._usage(ptoks, len(plan.pieces) * n)})

    async def _stream(self, request: web.Request, body: dict[str, Any], fault: Fault | None, plan: Plan,
                      ptoks: int, chat: bool, n: int, head: dict[str, Any]) -> web.StreamResponse:
        usage = self.include_usage(body)
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}

        def chunk(part: dict[str, Any], finish: str | None = None) -> bytes:
            extra = self.choice_extra(plan) if finish else {}
            key = "delta" if chat else "text"
            choices = [{"index": i, key: part if chat else part.get("content", ""), "logprobs": None,
                        "finish_reason": finish, **extra} for i in range(n)]
            return sse_data({**head, "choices": choices, **({"usage": None} if usage else {})})

        events = [*self.stream_prologue(), *([StreamEvent(chunk({"role": "assistant", "content": ""}), True)]
                                             if chat else [])]
        call = due_call(body) if chat else None
        produced = len(plan.pieces) * n
        if call is not None:  # the id and name first, then the arguments in fragments
            pieces = argument_pieces(call["arguments"])
            produced = len(pieces)
            start = {"index": 0, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                     "function": {"name": call["name"], "arguments": ""}}
            events.append(StreamEvent(chunk({"tool_calls": [start]}), True))
            events += [StreamEvent(chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}), True)
                       for p in pieces]
            events.append(StreamEvent(chunk({}, "tool_calls")))
        else:
            events += [StreamEvent(chunk({"content": p}), True) for p in plan.pieces]
            events.append(StreamEvent(chunk({}, plan.finish)))
        if usage:
            events.append(StreamEvent(sse_data({**head, "choices": [], "usage": self._usage(ptoks, produced)})))
        events.append(StreamEvent(b"data: [DONE]\n\n"))
        resp = await open_stream(request)
        msg = fault.message if fault else None
        return await send_stream(request, resp, events, fault, self.in_band_error(msg))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """Deterministic unit vectors (a hash of each input seeds them); `dimensions` truncates and
        re-normalises, as OpenAI's text-embedding-3 models do; base64 is little-endian float32."""
        body, fault, early = await self._prologue(request)
        if early is not None:
            return early
        inputs = _embedding_inputs(body.get("input"))
        if inputs is None:
            return self.error(400, "'$.input' is invalid. Please check the API reference: "
                              "https://platform.openai.com/docs/api-reference.", param="input")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return self.error(400, f"{fmt!r} is not one of ['float', 'base64'] - 'encoding_format'",
                              param="encoding_format")
        dims = body.get("dimensions")
        if dims is not None and (not isinstance(dims, int) or not 1 <= dims <= self.embedding_dimensions):
            return self.error(400, f"{dims!r} is not a valid 'dimensions'", param="dimensions")
        ptoks = sum(count_words(x) if isinstance(x, str) else len(x) for x in inputs)
        bad = self.too_long(max(count_words(x) if isinstance(x, str) else len(x) for x in inputs))
        if bad is not None:
            return bad
        dropped = await self.nonstream_fault(request, fault, 1)
        if dropped is not None:
            return dropped
        data = [{"object": "embedding", "index": i,
                 "embedding": _encode(sim_vector(x, self.embedding_dimensions, dims), fmt)}
                for i, x in enumerate(inputs)]
        return web.json_response({"object": "list", "data": data, "model": self.model_name,
                                  "usage": {"prompt_tokens": ptoks, "total_tokens": ptoks}})

    async def _models(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return self.auth_error()
        return web.json_response({"object": "list", "data": [self.model_card()]})


def _prompt_count(prompt: Any) -> int:
    """Prompt tokens of a completion prompt: words of str prompts, ids of token-id prompts."""
    if isinstance(prompt, str):
        return count_words(prompt)
    if isinstance(prompt, list):
        return sum(_prompt_count(p) if not isinstance(p, int) else 1 for p in prompt)
    return 0


def _embedding_inputs(value: Any) -> list[str | list[int]] | None:
    """The four shapes of `input` as a list of single inputs; None for anything OpenAI refuses."""
    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > 2048:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return [list(value)]
    if all(isinstance(x, str) and x for x in value):
        return list(value)
    if all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in value):
        return list(value)
    return None


def sim_vector(item: str | list[int], native: int, dimensions: int | None = None) -> list[float]:
    """A deterministic unit vector for one input (tests compare with it)."""
    seed = hashlib.sha256(repr(item).encode()).digest()
    raw = [(b - 127.5) / 127.5 for b in (seed * (native // len(seed) + 1))[:native]]
    raw = raw[:dimensions] if dimensions else raw
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector
