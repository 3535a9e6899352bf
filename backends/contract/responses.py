"""Every OpenAI response body and stream chunk the gateway makes, built in one place.

Backends that do not speak OpenAI natively (llama.cpp, Anthropic), the cache's replays and the last
resort all build their bodies and frames here, so a field or a rule (such as `"usage": null` on every
chat chunk of a stream that asked for usage) is written once. Plain dicts and orjson, no pydantic:
these run once per token. Frames that an OpenAI-compatible upstream sent are passed through untouched
and never rebuilt.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def split_frames(chunk: bytes) -> list[bytes]:
    """The complete SSE frames in a chunk of a stream (see `SSEStream`), each with its terminator."""
    return [frame + b"\n\n" for frame in chunk.split(b"\n\n") if frame]


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# -- full bodies -----------------------------------------------------------------------------------------


def chat_choice(index: int, content: str | None, finish: str | None, *, refusal: str | None = None,
                tool_calls: list[dict[str, Any]] | None = None, logprobs: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def tool_call(id: str | None, name: str | None, arguments: str, type: str = "function") -> dict[str, Any]:
    """One entry of a message's `tool_calls`."""
    return {"id": id, "type": type, "function": {"name": name, "arguments": arguments}}


def chat_completion(*, id: str, created: int, model: str, fingerprint: str | None,
                    choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """A `chat.completion` from choices built by `chat_choice`."""
    return {"id": id, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": choices, "usage": usage}


def chat_response(
    *, id: str, created: int, model: str, fingerprint: str | None,
    choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int,
) -> dict[str, Any]:
    """A `chat.completion` of plain (text, finish_reason) choices."""
    return chat_completion(id=id, created=created, model=model, fingerprint=fingerprint,
                           choices=[chat_choice(i, text, finish) for i, (text, finish) in enumerate(choices)],
                           usage=usage(prompt_tokens, completion_tokens))


def completion_choice(index: int, text: str, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def text_completion(*, id: str, created: int, model: str, fingerprint: str | None,
                    choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """A legacy `text_completion` from choices built by `completion_choice`."""
    return {"id": id, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": fingerprint, "choices": choices, "usage": usage}


def completion_response(
    *, id: str, created: int, model: str, fingerprint: str | None,
    choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int,
) -> dict[str, Any]:
    """A `text_completion` of plain (text, finish_reason) choices."""
    return text_completion(id=id, created=created, model=model, fingerprint=fingerprint,
                           choices=[completion_choice(i, text, finish) for i, (text, finish) in enumerate(choices)],
                           usage=usage(prompt_tokens, completion_tokens))


# -- stream chunks ---------------------------------------------------------------------------------------


class ChatChunks:
    """Frames of one chat stream; every chunk shares id, created, model and fingerprint (`head`)."""

    __slots__ = ("head", "_include_usage")

    def __init__(self, *, id: str, created: int, model: str, fingerprint: str | None, include_usage: bool) -> None:
        self.head = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": fingerprint}
        self._include_usage = include_usage

    def frame(self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        """Any chunk with one choice. When the client asked for usage, every chunk but the last says
        `"usage": null` (as OpenAI's do)."""
        chunk = {**self.head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                           "finish_reason": finish}]}
        if self._include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def role(self, index: int) -> bytes:
        return self.frame(index, {"role": "assistant", "content": ""})

    def content(self, index: int, text: str, logprobs: Any = None) -> bytes:
        return self.frame(index, {"content": text}, logprobs=logprobs)

    def refusal(self, index: int, text: str) -> bytes:
        return self.frame(index, {"refusal": text})

    def tool_call_start(self, index: int, n: int, id: str | None, name: str | None, arguments: str = "",
                        type: str = "function") -> bytes:
        """The first chunk of the `n`th tool call of a choice: its id, type and name."""
        call = {"index": n, "id": id, "type": type, "function": {"name": name, "arguments": arguments}}
        return self.frame(index, {"tool_calls": [call]})

    def tool_call_arguments(self, index: int, n: int, arguments: str) -> bytes:
        return self.frame(index, {"tool_calls": [{"index": n, "function": {"arguments": arguments}}]})

    def finish(self, index: int, reason: str) -> bytes:
        return self.frame(index, {}, reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self.usage_of(usage(prompt_tokens, completion_tokens))

    def usage_of(self, counts: dict[str, Any]) -> bytes:
        """The last chunk of a stream that asked for usage: no choices, the counts as given."""
        return sse({**self.head, "choices": [], "usage": counts})


class CompletionChunks:
    """Frames of one legacy-completion stream (same object shape as the full response)."""

    __slots__ = ("head",)

    def __init__(self, *, id: str, created: int, model: str, fingerprint: str | None) -> None:
        self.head = {"id": id, "object": "text_completion", "created": created, "model": model,
                     "system_fingerprint": fingerprint}

    def text(self, index: int, text: str, finish: str | None = None, logprobs: Any = None) -> bytes:
        # No `"usage": null` here: CreateCompletionResponse types usage as an object, so it is left out.
        return sse({**self.head, "choices": [completion_choice(index, text, finish, logprobs)]})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self.usage_of(usage(prompt_tokens, completion_tokens))

    def usage_of(self, counts: dict[str, Any]) -> bytes:
        return sse({**self.head, "choices": [], "usage": counts})


def error_frame(body: dict[str, Any]) -> bytes:
    """An in-band error after streaming has begun; the OpenAI SDK raises APIError on it."""
    return sse(body)
