"""Anthropic Messages <-> chat completions, both ways, as pure functions of plain dicts.

Going in: `system` becomes a system message; a user turn's `tool_result` blocks become `tool` messages
(placed first, right after the assistant turn that called them) and its text the user message; an
assistant turn's `tool_use` blocks become `tool_calls`; tools and `tool_choice` take their chat
spelling (`any` is `required`, `tool` a named function). Coming out: the chat message becomes text and
`tool_use` blocks, the finish reason a `stop_reason`, and usage Anthropic's, cache reads reported as
`cache_read_input_tokens` and left out of `input_tokens`, as Anthropic counts them. The errors are
rendered in Anthropic's shape (`error_body`).
"""

from __future__ import annotations

import os
from typing import Any

import orjson

from backends.contract.errors import GatewayError, InvalidRequest
from backends.contract.native import ANTHROPIC_FIELD
from gateway.surfaces.messages.protocol import CountTokensRequest, MessagesRequest

MAX_STOP_SEQUENCES = 4  # what chat completions (and so every backend) can take


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"  # as Anthropic's ids: 24 characters after the prefix


# -- request: Messages -> chat ------------------------------------------------------------------------


def to_chat(req: CountTokensRequest) -> dict[str, Any]:
    """The chat request body (for `count_tokens`, without sampling fields)."""
    messages = system_messages(req.system)
    for i, message in enumerate(req.messages):
        messages += turn(message.role, message.content, f"messages[{i}]")
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = chat_tools(req.tools)
    if req.tool_choice is not None:
        choice = req.tool_choice
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest("tool_choice.name: Field required", param="tool_choice.name")
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or \
            {"type": "function", "function": {"name": choice.name}}
        if choice.disable_parallel_tool_use and req.tools:
            body["parallel_tool_calls"] = False
    if isinstance(req, MessagesRequest):
        body["max_completion_tokens"] = req.max_tokens
        stops = req.stop_sequences or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidRequest(f"stop_sequences: at most {MAX_STOP_SEQUENCES} are supported by this gateway.",
                                 param="stop_sequences")
        if any(s == "" for s in stops):
            raise InvalidRequest("stop_sequences: each stop sequence must be non-empty.", param="stop_sequences")
        if stops:
            body["stop"] = stops
        for name in ("temperature", "top_p", "top_k"):
            if getattr(req, name) is not None:
                body[name] = getattr(req, name)
        fmt = (req.output_config or {}).get("format")
        if fmt is not None:
            body["response_format"] = _response_format(fmt)
        if req.metadata is not None and req.metadata.user_id:
            body["user"] = req.metadata.user_id
        if req.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # message_delta always carries the usage
    return body


def _response_format(fmt: Any) -> dict[str, Any]:
    """Structured outputs (`output_config.format`) -> chat's json_schema response_format."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
                             param="output_config.format")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"], "strict": True}}


def system_messages(system: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    texts = []
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise InvalidRequest(f"system[{j}]: only text blocks are accepted in 'system'.", param=f"system[{j}]")
        texts.append(block["text"])
    return [{"role": "system", "content": "\n\n".join(texts)}]


def turn(role: str, content: str | list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """One Messages turn -> one or more chat messages."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise InvalidRequest(f"{at}.text: Field required", param=f"{at}.text")
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, at))
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # a model's own reasoning; chat backends take no such input
        else:
            raise InvalidRequest(f"{at}.type: content blocks of type '{kind}' are not supported in a '{role}' turn "
                                 "by this gateway.", param=f"{at}.type")
    out: list[dict[str, Any]] = list(results)
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        if text or calls:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            out.append(message)
        return out
    if parts:
        plain = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "".join(p["text"] for p in parts) if plain else parts})
    return out


def _image(block: dict[str, Any], at: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest(f"{at}.source: an image needs a base64 or url source.", param=f"{at}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_call(block: dict[str, Any], at: str) -> dict[str, Any]:
    for name in ("id", "name"):
        if not isinstance(block.get(name), str) or not block[name]:
            raise InvalidRequest(f"{at}.{name}: Field required", param=f"{at}.{name}")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{at}.input: Input should be a valid dictionary", param=f"{at}.input")
    return {"id": block["id"], "type": "function",
            "function": {"name": block["name"], "arguments": orjson.dumps(arguments).decode()}}


def _tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(block.get("tool_use_id"), str) or not block["tool_use_id"]:
        raise InvalidRequest(f"{at}.tool_use_id: Field required", param=f"{at}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{at}.content[{k}]: only text tool results are supported by this gateway.",
                                     param=f"{at}.content[{k}]")
            texts.append(part["text"])
        content = "\n".join(texts)
    if not isinstance(content, str):
        raise InvalidRequest(f"{at}.content: must be a string or a list of text blocks", param=f"{at}.content")
    if block.get("is_error"):
        content = f"[error] {content}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools[{i}]: must be an object", param=f"tools[{i}]")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise InvalidRequest(f"tools[{i}].type: the server tool '{kind}' is not available through this gateway; "
                                 "only client tools (name, input_schema) are.", param=f"tools[{i}].type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise InvalidRequest(f"tools[{i}].name: Field required", param=f"tools[{i}].name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"tools[{i}].input_schema: Field required", param=f"tools[{i}].input_schema")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


# -- response: chat -> Messages -----------------------------------------------------------------------

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}


def stop_reason(finish: str | None) -> str | None:
    return STOP_REASONS.get(finish or "", "end_turn") if finish else None


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the `input` object; text that is not a JSON object is kept, not lost."""
    try:
        value = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"value": value}


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    chat_usage = chat_usage or {}
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    details = chat_usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    written = int(details.get("cache_write_tokens") or details.get("cache_creation_tokens") or 0)
    return {"input_tokens": max(0, prompt - cached - written), "output_tokens": int(chat_usage.get("completion_tokens")
                                                                                    or 0),
            "cache_creation_input_tokens": written, "cache_read_input_tokens": cached}


def from_chat(req: MessagesRequest, chat: dict[str, Any]) -> dict[str, Any]:
    """A finished chat completion -> Anthropic's `message`; an Anthropic deployment's own message as it came."""
    native = chat.get(ANTHROPIC_FIELD)
    if isinstance(native, dict):
        return native
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": fn.get("name") or "",
                        "input": tool_input(fn.get("arguments") or "")})
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": chat.get("model") or req.model,
            "content": content, "stop_reason": stop_reason(choice.get("finish_reason") or "stop"),
            "stop_sequence": None, "usage": usage(chat.get("usage"))}


# -- errors ---------------------------------------------------------------------------------------------

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status == 503:
        return "overloaded_error"
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(exc: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(exc.status_code), "message": exc.message}}


def in_band_error(error: dict[str, Any], status: int | None = None) -> dict[str, Any]:
    """An OpenAI in-band error (a chat stream that broke) in Anthropic's shape."""
    kind = "rate_limit_error" if error.get("type") == "rate_limit_error" else \
        ("overloaded_error" if error.get("type") == "service_unavailable_error" else "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(error.get("message") or "The stream failed.")}}
