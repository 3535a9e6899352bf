"""Responses API <-> chat completions, both ways, as pure functions of plain dicts.

Going in, input items become chat messages (a `function_call` item an assistant `tool_calls` entry, a
`function_call_output` item a `tool` message), function tools and `tool_choice` their chat spelling,
and `text.format` a `response_format`. Coming out, a chat completion's message becomes output items
(an output `message` with `output_text`, one `function_call` item per tool call) and its usage the
Responses usage. What cannot be said in chat terms is refused with the field it came from.
"""

from __future__ import annotations

import os
import time
from typing import Any

from backends.contract.errors import InvalidRequest
from gateway.surfaces.responses.protocol import HOSTED_TOOLS, ResponsesRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{os.urandom(16).hex()}"  # as unique as uuid4, at a quarter of its cost


# -- request: Responses -> chat ------------------------------------------------------------------------


def to_chat(req: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the chat request body, the conversation so far without the instructions, for the store).

    `history` is the stored conversation of `previous_response_id`; as on OpenAI, that response's
    instructions are not carried over, only its input and output.
    """
    if req.background:
        raise InvalidRequest("Background responses are not supported by this gateway.", param="background",
                             code="unsupported_parameter")
    if req.conversation is not None:
        raise InvalidRequest("Conversations are not supported by this gateway; use 'previous_response_id'.",
                             param="conversation", code="unsupported_parameter")
    conversation = [*history, *input_messages(req.input)]
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + conversation
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    _copy(body, req, "temperature", "top_p", "user", "seed", "parallel_tool_calls", "safety_identifier")
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    if req.tools:
        tools = chat_tools(req.tools)
        if tools:
            body["tools"] = tools
    if req.tool_choice is not None:
        body["tool_choice"] = chat_tool_choice(req.tool_choice)
    fmt = response_format(req)
    if fmt is not None:
        body["response_format"] = fmt
    if wants_logprobs(req):
        body["logprobs"] = True
        body["top_logprobs"] = req.top_logprobs or 0
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # a Responses stream always ends with its usage
    return body, conversation


LOGPROBS_ITEM = "message.output_text.logprobs"


def wants_logprobs(req: ResponsesRequest) -> bool:
    """`top_logprobs`, or `include: ["message.output_text.logprobs"]`, asks for the output's logprobs."""
    return req.top_logprobs is not None or LOGPROBS_ITEM in (req.include or ())


def _copy(body: dict[str, Any], req: ResponsesRequest, *names: str) -> None:
    for name in names:
        value = getattr(req, name)
        if value is not None:
            body[name] = value


def input_messages(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items -> chat messages; consecutive function calls join one assistant message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid value for '{where}': each input item must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, where))
        elif kind == "function_call":
            call = {"id": _text_field(item, "call_id", where), "type": "function",
                    "function": {"name": _text_field(item, "name", where),
                                 "arguments": _text_field(item, "arguments", where, empty_ok=True)}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            elif last is not None and last["role"] == "assistant":
                last["tool_calls"] = [call]
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            if isinstance(output, list):
                output = _parts_text(output, f"{where}.output")
            if not isinstance(output, str):
                raise InvalidRequest(f"Invalid value for '{where}.output': must be a string.", param=f"{where}.output")
            out.append({"role": "tool", "tool_call_id": _text_field(item, "call_id", where), "content": output})
        elif kind == "reasoning":
            continue  # a reasoning model's own notes; a chat backend has no way to take them back
        elif kind == "item_reference":
            raise InvalidRequest("Item references are not supported by this gateway; send the item itself or use "
                                 "'previous_response_id'.", param=where, code="unsupported_parameter")
        else:
            raise InvalidRequest(f"Input items of type '{kind}' are not supported by this gateway.",
                                 param=f"{where}.type", code="unsupported_parameter")
    return out


_ROLES = ("user", "assistant", "system", "developer")


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(f"Invalid value for '{where}.role': must be one of {', '.join(_ROLES)}.",
                             param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise InvalidRequest(f"Missing required parameter: '{where}.content'.", param=f"{where}.content",
                             code="missing_required_parameter")
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        parts.append(_part(part, f"{where}.content[{j}]"))
    if all(p["type"] == "text" for p in parts):  # plain text is the widest-understood spelling
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _part(part: Any, where: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"Invalid value for '{where}.text': must be a string.", param=f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "refusal":
        return {"type": "text", "text": str(part.get("refusal") or "")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidRequest("Only images given by 'image_url' are supported by this gateway.",
                                 param=f"{where}.image_url", code="unsupported_parameter")
        image: dict[str, Any] = {"url": url}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    raise InvalidRequest(f"Content parts of type '{kind}' are not supported by this gateway.", param=f"{where}.type",
                         code="unsupported_content")


def _parts_text(parts: list[Any], where: str) -> str:
    texts = [_part(p, f"{where}[{j}]") for j, p in enumerate(parts)]
    if any(p["type"] != "text" for p in texts):
        raise InvalidRequest("Only text tool outputs are supported by this gateway.", param=where,
                             code="unsupported_content")
    return "".join(p["text"] for p in texts)


def _text_field(item: dict[str, Any], name: str, where: str, *, empty_ok: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or (not value and not empty_ok):
        raise InvalidRequest(f"Missing required parameter: '{where}.{name}'.", param=f"{where}.{name}",
                             code="missing_required_parameter")
    return value


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in HOSTED_TOOLS:
            raise InvalidRequest(f"The built-in tool '{kind}' is not available through this gateway; only "
                                 "function tools are.", param=f"tools[{i}].type", code="unsupported_tool")
        if kind != "function":
            raise InvalidRequest(f"Invalid value for 'tools[{i}].type': only 'function' tools are supported.",
                                 param=f"tools[{i}].type", code="unsupported_tool")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"Missing required parameter: 'tools[{i}].name'.", param=f"tools[{i}].name",
                                 code="missing_required_parameter")
        fn: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    kind = choice["type"]
    if kind == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Missing required parameter: 'tool_choice.name'.", param="tool_choice.name",
                                 code="missing_required_parameter")
        return {"type": "function", "function": {"name": name}}
    if kind in HOSTED_TOOLS:
        raise InvalidRequest(f"The built-in tool '{kind}' is not available through this gateway.",
                             param="tool_choice.type", code="unsupported_tool")
    raise InvalidRequest(f"A tool_choice of type '{kind}' is not supported by this gateway.",
                         param="tool_choice.type", code="unsupported_parameter")


def response_format(req: ResponsesRequest) -> dict[str, Any] | None:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not fmt.name:
        raise InvalidRequest("Missing required parameter: 'text.format.name'.", param="text.format.name",
                             code="missing_required_parameter")
    schema: dict[str, Any] = {"name": fmt.name}
    if fmt.schema_ is not None:
        schema["schema"] = fmt.schema_
    if fmt.description is not None:
        schema["description"] = fmt.description
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The input as the items `GET /v1/responses/{id}/input_items` lists: each with an id and a status,
    message text as `input_text` parts (already validated by `input_messages`)."""
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    out = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            content = item["content"]
            parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else content
            out.append({"id": item.get("id") or new_id("msg"), "type": "message", "role": item["role"],
                        "status": "completed", "content": parts})
        elif kind in ("function_call", "function_call_output"):
            prefix = "fc" if kind == "function_call" else "fco"
            out.append({**item, "type": kind, "id": item.get("id") or new_id(prefix),
                        "status": item.get("status") or "completed"})
    return out


# -- response: chat -> Responses ------------------------------------------------------------------------


def output_items(message: dict[str, Any], status: str = "completed",
                 logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A chat message -> Responses output items: the text (or refusal) first, then each function call.
    `logprobs`: the chat choice's `logprobs.content` (the same entries the Responses API lists)."""
    items: list[dict[str, Any]] = []
    content = message.get("content")
    refusal = message.get("refusal")
    if content or refusal or not message.get("tool_calls"):
        part = ({"type": "refusal", "refusal": refusal} if refusal and not content
                else output_text(content or "", logprobs))
        items.append({"id": new_id("msg"), "type": "message", "role": "assistant", "status": status,
                      "content": [part]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        items.append(function_call_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "",
                                        fn.get("arguments") or "", status))
    return items


def output_text(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage -> Responses usage, the cached and reasoning tokens carried over when reported."""
    if not chat_usage:
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    pdetails = chat_usage.get("prompt_tokens_details") or {}
    cdetails = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(pdetails.get("cached_tokens") or 0),
                                 "cache_write_tokens": int(pdetails.get("cache_write_tokens") or 0)},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(cdetails.get("reasoning_tokens") or 0)},
        "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion),
    }


_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def status_of(finish_reason: str | None) -> tuple[str, dict[str, Any] | None]:
    """(status, incomplete_details) for a chat finish reason."""
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def response_object(req: ResponsesRequest, resp_id: str, created_at: int, *, model: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    incomplete: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `response` object, echoing the request's settings as OpenAI does."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
    return {
        "id": resp_id, "object": "response", "created_at": created_at, "status": status,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "background": False, "error": error, "incomplete_details": incomplete, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "max_tool_calls": None, "model": model, "output": output,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "reasoning": {"effort": None, "summary": None},
        "service_tier": "default", "store": req.store,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": fmt or {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
        "tools": [_tool_echo(t) for t in req.tools or []],
        "top_p": 1.0 if req.top_p is None else req.top_p, "truncation": req.truncation or "disabled",
        "top_logprobs": req.top_logprobs or 0,
        "metadata": req.metadata or {}, **({"usage": usage} if usage is not None else {}),
        **({"user": req.user} if req.user is not None else {}),
    }


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict", True)}


def from_chat(req: ResponsesRequest, resp_id: str, created_at: int, chat: dict[str, Any]) -> dict[str, Any]:
    """A finished chat completion -> the `response` object."""
    choice = (chat.get("choices") or [{}])[0]
    status, incomplete = status_of(choice.get("finish_reason"))
    return response_object(req, resp_id, created_at, model=chat.get("model") or req.model, status=status,
                           output=output_items(choice.get("message") or {}, status,
                                               (choice.get("logprobs") or {}).get("content")),
                           usage=usage(chat.get("usage")), incomplete=incomplete)


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The output items back as one chat assistant message (the next turn's history)."""
    text = "".join(part.get("text") or "" for item in output if item["type"] == "message"
                   for part in item["content"] if part.get("type") == "output_text")
    calls = [{"id": item["call_id"], "type": "function",
              "function": {"name": item["name"], "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    if not text and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message
