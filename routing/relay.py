"""The frame-level pieces of relaying a stream: reading to its first content, feeding the assembler,
making a continuation's frames look like the original stream's, and closing what broke.

Plain functions on bytes and parsed chunks, one parse per frame; the router's `_Run.relay` strings
them together.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Sequence

from backends.aio import within
from backends.base import SSEStream
from backends.contract import responses as fmt
from backends.contract.assembler import StreamAssembler, parse_frame
from backends.contract.errors import StreamIdleTimeout
from backends.contract.responses import split_frames
from routing.outcome import Leg
from routing.splice import Splice


def idle_timeout(idle_s: float | None) -> StreamIdleTimeout:
    return StreamIdleTimeout(f"The stream went quiet for more than {idle_s:g}s (idle_s).")


async def to_first_content(stream: SSEStream, idle_s: float | None) -> SSEStream:
    """Read a stream up to its first chunk with content (each chunk within `idle_s`); those chunks are
    replayed before the rest.

    Until then nothing has reached the client, so a deployment that sends headers and a role chunk
    and then nothing fails over as if it had sent nothing."""
    held: list[bytes] = []
    try:
        while True:
            try:
                chunk = await (stream.__anext__() if idle_s is None else within(stream.__anext__(), idle_s))
            except asyncio.TimeoutError:
                raise idle_timeout(idle_s) from None
            held.append(chunk)
            if has_content(chunk):
                break
    except StopAsyncIteration:
        pass  # ended without content: the relay sees the end (and its [DONE], or the lack of it)
    except BaseException:
        await close_stream(stream)
        raise
    return Replay(held, stream)


CONTENT_KEYS = ("content", "tool_calls", "function_call", "reasoning_content", "reasoning", "refusal")


def has_content(chunk: bytes) -> bool:
    """Does any frame carry the answer (text, tool calls, reasoning, a finish, an error, the end)?"""
    for frame in split_frames(chunk):
        parsed = parse_frame(frame)
        if parsed is None:
            if b"[DONE]" in frame:
                return True
            continue
        choices = parsed.get("choices")
        if not choices:  # an error, or usage after the answer
            return True
        for choice in choices:
            if choice.get("text") or choice.get("finish_reason"):
                return True
            delta = choice.get("delta") or {}
            if any(delta.get(k) for k in CONTENT_KEYS):
                return True
    return False


class Replay:
    """Chunks already read, then the rest of the stream; no generator frame of its own per chunk."""

    def __init__(self, held: list[bytes], rest: SSEStream) -> None:
        self._held = held
        self._rest = rest

    def __aiter__(self) -> "Replay":
        return self

    def __anext__(self) -> Any:
        if self._held:
            return _value(self._held.pop(0))
        return self._rest.__anext__()

    async def aclose(self) -> None:
        await close_stream(self._rest)


async def _value(chunk: bytes) -> bytes:
    return chunk


def fed(frame: bytes, asm: StreamAssembler) -> bytes:
    asm.feed(frame)
    return frame


async def assembled(stream: SSEStream, asm: StreamAssembler) -> AsyncIterator[bytes]:
    async for chunk in stream:
        for frame in split_frames(chunk):
            asm.feed(frame)
        yield chunk


def rewritten(chunk: bytes, asm: StreamAssembler, legs: Sequence[Leg] = (), splice: Splice | None = None) -> bytes:
    """A continuation's frames as the original stream's: its role chunk dropped, the original id,
    created and model on every chunk, and its usage the whole answer's (the earlier legs' added), so
    the client is told what the answer cost. Each frame is parsed once and fed to the assembler. A
    restarted answer goes through `splice` first: only what the client does not have is relayed."""
    kept: list[bytes] = []
    for frame in split_frames(chunk):
        parsed = parse_frame(frame)
        if parsed is None:  # [DONE] or a comment
            if splice is not None and b"[DONE]" in frame:
                splice.end()
            asm.feed(frame)
            kept.append(frame)
            continue
        if splice is not None:
            parsed = splice.take(parsed)
            if parsed is None:
                continue
        choices = parsed.get("choices") or []
        drop = False
        for choice in choices:
            delta = choice.get("delta") or {}
            delta.pop("role", None)
            if (len(choices) == 1 and not delta.get("content") and not delta.get("tool_calls")
                    and not choice.get("finish_reason")):
                drop = True
        if drop:
            continue
        parsed.update({k: v for k, v in asm.head.items() if v is not None})
        if legs and isinstance(parsed.get("usage"), dict):
            parsed["usage"] = with_legs(parsed["usage"], legs)
        asm.observe(parsed)
        kept.append(fmt.sse(parsed))
    return b"".join(kept)


def with_legs(usage: dict[str, Any], legs: Sequence[Leg]) -> dict[str, Any]:
    """A continuation's usage plus the earlier legs': every leg's prompt and output, as each was billed."""
    prompt = int(usage.get("prompt_tokens") or 0) + sum(leg.prompt_tokens for leg in legs)
    completion = int(usage.get("completion_tokens") or 0) + sum(leg.completion_tokens for leg in legs)
    return {**usage, "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def close_stream(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # closing a broken upstream must not mask the real outcome
            pass
