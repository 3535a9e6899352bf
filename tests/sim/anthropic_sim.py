"""Simulated Anthropic Messages API (``POST /v1/messages``, protocols.md section 4).

Reproduces what a translating gateway must get right: required headers and
``max_tokens``, top-level ``system``, the ``{"type":"error",...}`` envelope and
529 ``overloaded_error``, named SSE events without ``[DONE]``, ``tool_use``
blocks streamed as ``input_json_delta`` fragments, and native prefill (a
trailing assistant turn is continued; the answer holds only the continuation).

Tool rule: with ``tools`` (and ``tool_choice`` not ``none``) and a last user turn
(not a tool result) containing the word "weather", the answer is the text
"Let me check." then ``tool_use`` ``{"city": "Paris"}`` for the first tool (or the
forced one); ``output_tokens`` = text pieces + JSON fragments.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from typing import Any

from aiohttp import web

from tests.sim.base import SimServer
from tests.sim.text import canonical_reply, content_text, continuation, last_user_text, plan_reply, prompt_tokens, words
from tests.sim.wire import BODY, BODY_OK, StreamEvent, open_stream, send_stream, sse_event

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
          504: "timeout_error", 529: "overloaded_error"}
_MESSAGES = {401: "invalid x-api-key", 403: "Your API key does not have permission to use the specified resource.",
             404: "Not found", 429: "Number of request tokens has exceeded your per-minute rate limit",
             500: "Internal server error", 529: "Overloaded"}
TOOL_INPUT = {"city": "Paris"}
THINKING = "The user asks something; answer plainly."  # what a request with thinking enabled thinks
CACHED_TOKENS = 7  # the prompt tokens a request with a cache_control breakpoint reads from the cache
_WEATHER = re.compile(r"\bweather\b", re.IGNORECASE)


def _rid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class AnthropicSim(SimServer):
    """Anthropic upstream. ``model_name=None`` echoes the requested model, like the real API."""

    model_paths = frozenset({"/v1/messages"})
    server_error_status = 529

    def __init__(self, name: str = "anthropic", port: int = 0, *, model_name: str | None = None,
                 api_key: str | None = None) -> None:
        super().__init__(name, port)
        self.model_name = model_name
        self.api_key = api_key

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    def fault_error(self, code: int, message: str | None) -> web.Response:
        return self.error(code, message)

    def error(self, status: int, message: str | None = None, *, err_type: str | None = None,
              code: str | None = None, param: str | None = None) -> web.Response:
        """Anthropic's error envelope with a ``request_id``."""
        rid = _rid("req_")
        etype = err_type or _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": etype, "message": message or _MESSAGES.get(status, f"Error {status}")},
                "request_id": rid}
        return web.json_response(body, status=status, headers={"request-id": rid})

    def in_band_error(self, message: str | None) -> bytes:
        return sse_event("error", {"type": "error", "error": {"type": "overloaded_error", "message": message or "Overloaded"}})

    def _validate(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("x-api-key")
        if not key:
            return self.error(401, "x-api-key header is required")
        if self.api_key is not None and key != self.api_key:
            return self.error(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return self.error(400, "anthropic-version: header is required")
        body = request[BODY]
        if not request[BODY_OK] or not isinstance(body, dict):
            return self.error(400, "There was an error parsing the body of your request as JSON.")
        for name in ("model", "max_tokens", "messages"):
            if name not in body:
                return self.error(400, f"{name}: Field required")
        mt = body["max_tokens"]
        if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
            return self.error(400, "max_tokens: Input should be a valid integer greater than or equal to 1")
        messages = body["messages"]
        if not isinstance(messages, list) or not messages:
            return self.error(400, "messages: at least one message is required")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                return self.error(400, f"messages.{i}.role: Input should be 'user' or 'assistant'")
        system = body.get("system")
        if system is not None and not isinstance(system, str) and not (
                isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system)):
            return self.error(400, "system: Input should be a valid string or a list of text blocks")
        last = messages[-1]
        if last["role"] == "assistant" and content_text(last.get("content")) != content_text(last.get("content")).rstrip():
            return self.error(400, "messages: final assistant content cannot end with trailing whitespace")
        return None

    def _tool(self, body: dict[str, Any]) -> str | None:
        """Name of the tool to call, if this request triggers the tool rule."""
        tools, choice = body.get("tools"), body.get("tool_choice") or {}
        last = body["messages"][-1]
        if not isinstance(tools, list) or not tools or choice.get("type") == "none" or last["role"] != "user":
            return None
        if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last.get("content") or []):
            return None
        if not _WEATHER.search(last_user_text(body["messages"])):
            return None
        return choice.get("name") if choice.get("type") == "tool" else tools[0].get("name")

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        fault = self.take_fault()
        early = await self.apply_fault(request, fault)
        if early is None:
            early = self._validate(request)
        if early is not None:
            return early
        body: dict[str, Any] = request[BODY]
        messages = body["messages"]
        model = self.model_name or body["model"]
        ptoks = prompt_tokens(messages, body.get("system"))
        tool = self._tool(body)
        if tool is not None:
            pieces, fragments = words("Let me check."), ['{"city": ', '"Paris"}']
            stop_reason, stop_seq = "tool_use", None
        else:
            last = messages[-1]
            text = (continuation(messages, content_text(last.get("content"))) if last["role"] == "assistant"
                    else canonical_reply(messages))
            plan = plan_reply(text, body["max_tokens"], body.get("stop_sequences"))
            pieces, fragments, stop_seq = plan.pieces, [], plan.stop_sequence
            stop_reason = "max_tokens" if plan.finish == "length" else "stop_sequence" if stop_seq else "end_turn"
        otoks = len(pieces) + len(fragments)
        tool_block = {"type": "tool_use", "id": _rid("toolu_"), "name": tool, "input": TOOL_INPUT}
        # Extended thinking, as Anthropic streams it: a thinking block, its text, then its signature.
        thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"
        signature = "sig_" + hashlib.sha256(repr(messages).encode()).hexdigest()[:32]
        # Prompt caching: a cache_control breakpoint anywhere makes the prompt a cache read.
        cached = CACHED_TOKENS if "cache_control" in json.dumps(body) else 0
        msg = {"id": _rid("msg_"), "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": ptoks, "output_tokens": 1, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": cached}}
        if not body.get("stream"):
            dropped = await self.nonstream_fault(request, fault, otoks)
            if dropped is not None:
                return dropped
            content = ([{"type": "thinking", "thinking": THINKING, "signature": signature}] if thinking else []) + \
                ([{"type": "text", "text": "".join(pieces)}] if pieces else []) + ([tool_block] if tool else [])
            usage = {**msg["usage"], "output_tokens": otoks}
            return web.json_response({**msg, "content": content, "stop_reason": stop_reason,
                                      "stop_sequence": stop_seq, "usage": usage})
        events = [StreamEvent(sse_event("message_start", {"type": "message_start", "message": msg}))]
        blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        if thinking:
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""},
                           [{"type": "thinking_delta", "thinking": THINKING},
                            {"type": "signature_delta", "signature": signature}]))
        if pieces:
            blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]))
        if tool:
            blocks.append(({**tool_block, "input": {}},
                           [{"type": "input_json_delta", "partial_json": f} for f in fragments]))
        for index, (start, deltas) in enumerate(blocks):
            events.append(StreamEvent(sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                                         "content_block": start})))
            if index == 0:
                events.append(StreamEvent(sse_event("ping", {"type": "ping"})))
            events += [StreamEvent(sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                       "delta": d}), True) for d in deltas]
            events.append(StreamEvent(sse_event("content_block_stop", {"type": "content_block_stop", "index": index})))
        if not blocks:
            events.append(StreamEvent(sse_event("ping", {"type": "ping"})))
        events.append(StreamEvent(sse_event("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_seq},
            "usage": {"output_tokens": otoks}})))
        events.append(StreamEvent(sse_event("message_stop", {"type": "message_stop"})))
        resp = await open_stream(request, {"request-id": _rid("req_")})
        return await send_stream(request, resp, events, fault, self.in_band_error(fault.message if fault else None))

