"""Build OpenAI response bodies and SSE frames for backends that don't speak OpenAI natively.

Plain dicts and orjson, no pydantic: these run once per token.
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


def chat_response(
    *, id: str, created: int, model: str, fingerprint: str | None,
    choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class ChatChunks:
    """Frames of one chat stream; every chunk shares id, created and model."""

    def __init__(self, *, id: str, created: int, model: str, fingerprint: str | None, include_usage: bool) -> None:
        self._head = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                      "system_fingerprint": fingerprint}
        self._include_usage = include_usage

    def _frame(self, index: int, delta: dict[str, Any], finish: str | None) -> bytes:
        chunk = {**self._head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self._include_usage:
            chunk["usage"] = None
        return sse(chunk)

    def role(self, index: int) -> bytes:
        return self._frame(index, {"role": "assistant", "content": ""}, None)

    def content(self, index: int, text: str) -> bytes:
        return self._frame(index, {"content": text}, None)

    def finish(self, index: int, reason: str) -> bytes:
        return self._frame(index, {}, reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def completion_response(
    *, id: str, created: int, model: str, fingerprint: str | None,
    choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


class CompletionChunks:
    """Frames of one legacy-completion stream (same object shape as the full response)."""

    def __init__(self, *, id: str, created: int, model: str, fingerprint: str | None) -> None:
        self._head = {"id": id, "object": "text_completion", "created": created, "model": model,
                      "system_fingerprint": fingerprint}

    def text(self, index: int, text: str, finish: str | None = None) -> bytes:
        # No `"usage": null` here: CreateCompletionResponse types usage as an object, so it is left out.
        return sse({**self._head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def error_frame(body: dict[str, Any]) -> bytes:
    """An in-band error after streaming has begun; the OpenAI SDK raises APIError on it."""
    return sse(body)
