"""A cached (non-streamed) body, replayed as an OpenAI SSE stream.

Streamed answers reach the cache as the body `backends.contract.assembler.StreamAssembler` rebuilt
from their frames; `replay` turns such a body back into a stream, with the chunks built by
`backends.contract.responses`.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator, Iterator

from backends.contract.protocol import SamplingFields
from backends.contract.responses import DONE, ChatChunks, CompletionChunks

_WORDS = re.compile(r"\S+\s*|\s+")
_PIECE_CHARS = 24  # a few words per replayed chunk: looks like a stream, costs few frames


def split_text(text: str, size: int = _PIECE_CHARS) -> list[str]:
    """Word-boundary pieces of about `size` chars; "".join(pieces) == text."""
    pieces: list[str] = []
    current = ""
    for word in _WORDS.findall(text):
        current += word
        if len(current) >= size:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


async def replay(body: dict[str, Any], request: SamplingFields) -> AsyncIterator[bytes]:
    """SSE frames for a cached body, shaped like a live backend stream for `request`, ending with [DONE]."""
    chat, include_usage = request.is_chat, request.include_usage
    head = dict(id=body.get("id"), created=body.get("created"), model=body.get("model"),
                fingerprint=body.get("system_fingerprint"))
    if chat:
        chunks = ChatChunks(**head, include_usage=include_usage)
        frames = _chat_frames(body, chunks)
    else:
        chunks = CompletionChunks(**head)  # type: ignore[assignment]
        frames = _completion_frames(body, chunks)  # type: ignore[arg-type]
    for frame in frames:
        yield frame
    if include_usage and isinstance(body.get("usage"), dict):
        yield chunks.usage_of(body["usage"])  # stored usage verbatim (details included), not recomputed
    yield DONE


def _chat_frames(body: dict[str, Any], chunks: ChatChunks) -> Iterator[bytes]:
    for choice in body.get("choices") or ():
        i = choice.get("index", 0)
        msg = choice.get("message") or {}
        content = msg.get("content") or ""
        yield chunks.role(i)
        if choice.get("logprobs"):  # token logprobs don't split on our word boundaries: send them whole
            yield chunks.content(i, content, choice["logprobs"])
        else:
            for piece in split_text(content):
                yield chunks.content(i, piece)
        if msg.get("refusal"):
            yield chunks.refusal(i, msg["refusal"])
        for n, tc in enumerate(msg.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            yield chunks.tool_call_start(i, n, tc.get("id"), fn.get("name"), fn.get("arguments", ""),
                                         tc.get("type", "function"))
        yield chunks.finish(i, choice.get("finish_reason") or "stop")


def _completion_frames(body: dict[str, Any], chunks: CompletionChunks) -> Iterator[bytes]:
    for choice in body.get("choices") or ():
        i = choice.get("index", 0)
        text = choice.get("text") or ""
        if choice.get("logprobs"):
            yield chunks.text(i, text, None, choice["logprobs"])
        else:
            for piece in split_text(text):
                yield chunks.text(i, piece)
        yield chunks.text(i, "", choice.get("finish_reason") or "stop")
