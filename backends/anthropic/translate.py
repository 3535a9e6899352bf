"""OpenAI chat requests <-> Anthropic Messages API bodies: pure functions, no I/O.

Decisions:
- `system`/`developer` messages (wherever they are) become the top-level
  `system` string, joined with blank lines.
- Turns must alternate and start with `user`: same-role turns are merged and
  `PLACEHOLDER_USER` is put in front of a conversation that starts otherwise.
- OpenAI's temperature is 0-2, Anthropic's 0-1: values above 1 are clamped
  (not scaled), so the usual 0-1 settings mean the same on both sides.
- Anthropic rejects a final assistant turn (a prefill) ending in whitespace:
  it is stripped; `trim_repeat` drops that whitespace if the reply repeats it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

import orjson

from backends.contract.errors import InvalidRequest, UpstreamError
from backends.contract.protocol import ChatCompletionRequest, ChatMessage, ResponseFormatText, TextPart
from backends.contract.responses import chat_choice, chat_completion, tool_call
from backends.http import parse_retry_after
from backends.scrub import scrub

PLACEHOLDER_USER = "(continue)"
FINGERPRINT = "fp_anthropic"  # OpenAI's schema wants a string here
_IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_BAD_ID = re.compile(r"[^a-zA-Z0-9_-]")

FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}

# Anthropic error type -> HTTP status, for in-band stream errors (which carry no status).
ERROR_STATUS = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
    "timeout_error": 504, "overloaded_error": 529,
}


def finish_reason(stop_reason: str | None) -> str:
    return FINISH.get(stop_reason or "", "stop")


def _unsupported(what: str, param: str) -> InvalidRequest:
    return InvalidRequest(f"{what} is not supported by Anthropic models.", param=param, code="unsupported_parameter")


# -- request ------------------------------------------------------------------


def apply_params(request: ChatCompletionRequest, params: Mapping[str, Any]) -> ChatCompletionRequest:
    """Deployment overrides win over the request; an overriding `max_tokens` also beats `max_completion_tokens`."""
    if not params:
        return request
    update = dict(params)
    if "max_tokens" in update and "max_completion_tokens" not in update:
        update["max_completion_tokens"] = None
    return request.model_copy(update=update)


def check_supported(request: ChatCompletionRequest) -> None:
    if request.n > 1:
        raise _unsupported("'n' greater than 1", "n")
    if request.logprobs or request.top_logprobs:
        raise _unsupported("'logprobs'", "logprobs" if request.logprobs else "top_logprobs")
    if request.response_format is not None and not isinstance(request.response_format, ResponseFormatText):
        raise _unsupported(f"response_format '{request.response_format.type}'", "response_format")


def build_body(request: ChatCompletionRequest, *, model: str, default_max_tokens: int,
               prefill: str | None = None, stream: bool = False) -> dict[str, Any]:
    """The Anthropic request body; `prefill` is appended as a final assistant turn."""
    check_supported(request)
    system, messages = convert_messages(request.messages, prefill)
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_output_tokens or default_max_tokens,
                            "messages": messages}
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k:  # 0 means "off" in vLLM-style APIs
        body["top_k"] = request.top_k
    if request.stop:
        body["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    extra = request.model_extra or {}
    user = request.user or extra.get("safety_identifier")
    if user:
        body["metadata"] = {"user_id": str(user)}
    tools, choice = convert_tools(request.tools, request.tool_choice, extra.get("parallel_tool_calls"))
    if tools:
        body["tools"] = tools
    if choice:
        body["tool_choice"] = choice
    if stream:
        body["stream"] = True
    return body


def convert_messages(messages: list[ChatMessage], prefill: str | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """OpenAI messages -> (system text, alternating Anthropic turns starting with a user turn)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if msg.role in ("system", "developer"):
            text = msg.text()
            if text:
                system.append(text)
            continue
        if msg.role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(msg.tool_call_id or "")}
            text = msg.text()
            if text:
                block["content"] = text
            _append(turns, "user", [block])
        elif msg.role == "user":
            _append(turns, "user", _content_blocks(msg, i))
        else:
            _append(turns, "assistant", _content_blocks(msg, i) + _tool_use_blocks(msg, i))
    if prefill:
        _append(turns, "assistant", [{"type": "text", "text": prefill}])
    if turns and turns[-1]["role"] == "assistant":
        _strip_final(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER}]})
    return ("\n\n".join(system) or None), turns


def strip_prefill(text: str) -> tuple[str, str]:
    """(prefill without trailing whitespace, the whitespace removed)."""
    kept = text.rstrip()
    return kept, text[len(kept):]


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
        if role == "user":  # tool_result blocks must come first in a user turn
            turns[-1]["content"].sort(key=lambda b: b["type"] != "tool_result")
    else:
        turns.append({"role": role, "content": list(blocks)})


def _strip_final(turns: list[dict[str, Any]]) -> None:
    """Anthropic rejects a final assistant turn that ends in whitespace."""
    blocks = turns[-1]["content"]
    if blocks and blocks[-1]["type"] == "text":
        blocks[-1]["text"] = blocks[-1]["text"].rstrip()
        if not blocks[-1]["text"]:
            blocks.pop()
    if not blocks:
        turns.pop()


def _content_blocks(msg: ChatMessage, i: int) -> list[dict[str, Any]]:
    content = msg.content
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    out: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                out.append({"type": "text", "text": part.text})
        elif part.type == "refusal":
            text = (part.model_extra or {}).get("refusal")
            if text:
                out.append({"type": "text", "text": str(text)})
        elif part.type == "image_url":
            out.append(_image_block((part.model_extra or {}).get("image_url"), i))
        else:
            raise InvalidRequest(f"Content parts of type '{part.type}' are not supported by Anthropic models.",
                                 param="messages", code="unsupported_content")
    return out


def _image_block(image: Any, i: int) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    param = f"messages[{i}].content"
    if not isinstance(url, str) or not url:
        raise InvalidRequest("An 'image_url' part needs a 'url'.", param=param, code="invalid_value")
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        media_type = "image/jpeg" if media_type == "image/jpg" else media_type
        if not sep or encoding != "base64" or media_type not in _IMAGE_TYPES:
            raise InvalidRequest("Image data URLs must be base64 'data:image/{jpeg,png,gif,webp};base64,...'.",
                                 param=param, code="invalid_value")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    raise InvalidRequest("Image URLs must be http(s) or data: URLs.", param=param, code="invalid_value")


def _tool_use_blocks(msg: ChatMessage, i: int) -> list[dict[str, Any]]:
    out = []
    for call in msg.tool_calls or []:
        args = call.function.arguments
        try:
            parsed = json.loads(args) if args.strip() else {}
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidRequest(f"The arguments of tool call '{call.id}' must be a JSON object.",
                                 param=f"messages[{i}].tool_calls", code="invalid_value")
        out.append({"type": "tool_use", "id": _tool_id(call.id), "name": call.function.name, "input": parsed})
    return out


def _tool_id(value: str) -> str:
    """Anthropic ids must match ^[a-zA-Z0-9_-]+$; map both sides of a round trip the same way."""
    return _BAD_ID.sub("_", value) or "call"


def convert_tools(tools: list[dict[str, Any]] | None, choice: Any,
                  parallel: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    out = []
    for j, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise _unsupported("Tools other than 'function' tools", f"tools[{j}]")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest("A function tool needs a 'name'.", param=f"tools[{j}].function.name",
                                 code="missing_required_parameter")
        entry: dict[str, Any] = {"name": fn["name"],
                                 "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
        if fn.get("description"):
            entry["description"] = fn["description"]
        out.append(entry)
    mapped = _tool_choice(choice)
    if not out:
        if mapped and mapped["type"] in ("any", "tool"):
            raise InvalidRequest("'tool_choice' needs 'tools'.", param="tool_choice", code="invalid_value")
        return [], None
    if parallel is False and (mapped is None or mapped["type"] != "none"):
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out, mapped


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        return {"type": "any" if choice == "required" else choice}
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise _unsupported(f"tool_choice {json.dumps(choice)[:100]}", "tool_choice")


# -- response -----------------------------------------------------------------


def usage(u: Mapping[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage -> OpenAI usage; cache reads and writes count as prompt tokens."""
    u = u or {}
    cached = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + (u.get("cache_creation_input_tokens") or 0) + cached
    completion = u.get("output_tokens") or 0
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    written = u.get("cache_creation_input_tokens") or 0
    if cached or written:
        out["prompt_tokens_details"] = {"cached_tokens": cached, **({"cache_write_tokens": written} if written else {})}
    return out


def trim_repeat(text: str, skip: str) -> tuple[str, str]:
    """Drop from `text` the leading whitespace the client already has (`skip`); returns (text, skip left)."""
    n = 0
    while n < len(skip) and n < len(text) and text[n] == skip[n]:
        n += 1
    if n < len(text):  # a different character: nothing more to skip
        return text[n:], ""
    return "", skip[n:]


def to_chat_completion(msg: Mapping[str, Any], *, created: int, skip: str = "") -> dict[str, Any]:
    """An Anthropic `message` -> an OpenAI `chat.completion`; `skip` is the whitespace the prefill lost."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in msg.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(tool_call(block.get("id"), block.get("name"), orjson.dumps(block.get("input") or {}).decode()))
    text = trim_repeat("".join(texts), skip)[0] if skip else "".join(texts)
    choice = chat_choice(0, text if (text or not calls) else None, finish_reason(msg.get("stop_reason")),
                         tool_calls=calls)
    return chat_completion(id=f"chatcmpl-{msg.get('id') or 'anthropic'}", created=created,
                           model=msg.get("model") or "", fingerprint=FINGERPRINT, choices=[choice],
                           usage=usage(msg.get("usage")))


# -- errors -------------------------------------------------------------------


def upstream_error(status: int, raw: bytes, headers: Mapping[str, str], *, upstream: str,
                   secrets: Iterable[str | None] = ()) -> UpstreamError:
    """A non-200 answer -> UpstreamError; 529 stays 529 here (UpstreamError sends 503 and retries it).
    `secrets` (the key, the configured headers' values) are scrubbed from the message."""
    retry_after = parse_retry_after(headers)
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return error_from(err, status=status, secrets=secrets, retry_after=retry_after)
    what = "is overloaded" if status == 529 else f"returned HTTP {status}"
    return UpstreamError(f"The upstream '{upstream}' {what}.", status_code=status, retry_after=retry_after,
                         error_type="service_unavailable_error" if status == 529 else None)


def error_from(err: Mapping[str, Any], *, status: int | None = None, secrets: Iterable[str | None] = (),
               retry_after: float | None = None) -> UpstreamError:
    """An Anthropic `error` object (HTTP body or in-band `event: error`) -> UpstreamError."""
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    status = status or ERROR_STATUS.get(kind or "", 500)
    message = scrub(str(err.get("message") or "The upstream reported an error."), secrets)
    code = "context_length_exceeded" if status == 400 and message.startswith("prompt is too long") else kind
    overloaded = status == 529 or kind == "overloaded_error"  # OpenAI's type for "engine overloaded"
    return UpstreamError(message, status_code=status, code=code, retry_after=retry_after,
                         error_type="service_unavailable_error" if overloaded else None)
