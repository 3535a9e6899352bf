"""Convert between cached (non-streamed) bodies and OpenAI SSE streams.

`StreamAssembler` watches a live stream and rebuilds the body a non-streamed
request would have got, so streamed answers can be cached; `replay` turns a
cached body back into a stream. Plain dicts and orjson: this runs per chunk.
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import orjson

from backends.contract.responses import DONE, ChatChunks, CompletionChunks, sse

DEFAULT_FINGERPRINT = "fp_cache"
_WORDS = re.compile(r"\S+\s*|\s+")
_PIECE_CHARS = 24  # a few words per replayed chunk: looks like a stream, costs few frames


class _Choice:
    __slots__ = ("content", "refusal", "text", "tools", "finish", "logprobs")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.text: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.finish: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add_logprobs(self, lp: dict[str, Any]) -> None:
        """Chat ({content, refusal}) and legacy ({tokens, ...}) logprobs are lists to concatenate."""
        if self.logprobs is None:
            self.logprobs = {}
        for k, v in lp.items():
            if isinstance(v, list):
                self.logprobs.setdefault(k, []).extend(v)
            elif k not in self.logprobs:
                self.logprobs[k] = v


class StreamAssembler:
    """Feed it every SSE frame of a chat or legacy-completion stream; `result()` is the full body."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._chat: bool | None = None
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None
        self.done = False
        self.errored = False

    def feed(self, frame: bytes) -> None:
        for line in frame.split(b"\n"):
            if line.startswith(b"data:"):
                self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if data.startswith(b"[DONE]"):
            self.done = True
            return
        if self.done or self.errored:
            return
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(chunk, dict):
            return
        if "error" in chunk:
            self.errored = True
            return
        if not self._head:
            self._head = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model")}
            self._chat = chunk.get("object") != "text_completion"
        if chunk.get("system_fingerprint"):
            self._head["system_fingerprint"] = chunk["system_fingerprint"]
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            self._choice(c)

    def _choice(self, c: dict[str, Any]) -> None:
        choice = self._choices.get(c.get("index", 0))
        if choice is None:
            choice = self._choices[c.get("index", 0)] = _Choice()
        if c.get("finish_reason"):
            choice.finish = c["finish_reason"]
        if isinstance(c.get("logprobs"), dict):
            choice.add_logprobs(c["logprobs"])
        if not self._chat:
            if c.get("text"):
                choice.text.append(c["text"])
            return
        delta = c.get("delta") or {}
        if delta.get("content"):
            choice.content.append(delta["content"])
        if delta.get("refusal"):
            choice.refusal.append(delta["refusal"])
        for tc in delta.get("tool_calls") or ():
            tool = choice.tools.get(tc.get("index", 0))
            if tool is None:
                tool = choice.tools[tc.get("index", 0)] = {"id": None, "type": "function", "name": "", "args": []}
            if tc.get("id"):
                tool["id"] = tc["id"]
            if tc.get("type"):
                tool["type"] = tc["type"]
            fn = tc.get("function") or {}
            if fn.get("name"):
                tool["name"] += fn["name"]
            if fn.get("arguments"):
                tool["args"].append(fn["arguments"])

    @property
    def complete(self) -> bool:
        """[DONE] seen, no in-band error, and every choice finished: only then is it safe to cache."""
        return (self.done and not self.errored and bool(self._choices)
                and all(c.finish for c in self._choices.values()))

    def result(self) -> dict[str, Any] | None:
        """The equivalent non-streamed body (usage None if the stream had none), or None if incomplete."""
        if not self.complete:
            return None
        choices = [self._chat_choice(i, c) if self._chat else
                   {"index": i, "text": "".join(c.text), "logprobs": c.logprobs, "finish_reason": c.finish}
                   for i, c in sorted(self._choices.items())]
        return {
            "id": self._head["id"],
            "object": "chat.completion" if self._chat else "text_completion",
            "created": self._head["created"],
            "model": self._head["model"],
            "system_fingerprint": self._head.get("system_fingerprint") or DEFAULT_FINGERPRINT,
            "choices": choices,
            "usage": self._usage,
        }

    @staticmethod
    def _chat_choice(index: int, c: _Choice) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(c.content) or None,
                                   "refusal": "".join(c.refusal) or None}
        if c.tools:
            message["tool_calls"] = [
                {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": "".join(t["args"])}}
                for _, t in sorted(c.tools.items())
            ]
        return {"index": index, "message": message, "logprobs": c.logprobs, "finish_reason": c.finish}


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


async def replay(body: dict[str, Any], *, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    """SSE frames for a cached body, shaped like a live backend stream, ending with [DONE]."""
    head = {"id": body.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": body.get("created"), "model": body.get("model"),
            "system_fingerprint": body.get("system_fingerprint")}
    frames = _chat_frames(body, head, include_usage) if chat else _completion_frames(body, head)
    for frame in frames:
        yield frame
    if include_usage and isinstance(body.get("usage"), dict):
        # Stored usage verbatim (details included), not recomputed by ChatChunks.usage.
        yield sse({**head, "choices": [], "usage": body["usage"]})
    yield DONE


def _chat_frames(body: dict[str, Any], head: dict[str, Any], include_usage: bool) -> Any:
    chunks = ChatChunks(id=head["id"], created=head["created"], model=head["model"],
                        fingerprint=head["system_fingerprint"], include_usage=include_usage)

    def frame(index: int, delta: dict[str, Any], logprobs: Any = None) -> bytes:
        chunk = {**head, "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}]}
        if include_usage:
            chunk["usage"] = None
        return sse(chunk)

    for choice in body.get("choices") or ():
        i = choice.get("index", 0)
        msg = choice.get("message") or {}
        content = msg.get("content") or ""
        yield chunks.role(i)
        if choice.get("logprobs"):  # token logprobs don't split on our word boundaries: send them whole
            yield frame(i, {"content": content}, choice["logprobs"])
        else:
            for piece in split_text(content):
                yield chunks.content(i, piece)
        if msg.get("refusal"):
            yield frame(i, {"refusal": msg["refusal"]})
        for n, tc in enumerate(msg.get("tool_calls") or ()):
            fn = tc.get("function") or {}
            yield frame(i, {"tool_calls": [{"index": n, "id": tc.get("id"), "type": tc.get("type", "function"),
                                            "function": {"name": fn.get("name"),
                                                         "arguments": fn.get("arguments", "")}}]})
        yield chunks.finish(i, choice.get("finish_reason") or "stop")


def _completion_frames(body: dict[str, Any], head: dict[str, Any]) -> Any:
    chunks = CompletionChunks(id=head["id"], created=head["created"], model=head["model"],
                              fingerprint=head["system_fingerprint"])
    for choice in body.get("choices") or ():
        i = choice.get("index", 0)
        text = choice.get("text") or ""
        if choice.get("logprobs"):
            yield sse({**head, "choices": [{"index": i, "text": text, "logprobs": choice["logprobs"],
                                            "finish_reason": None}]})
        else:
            for piece in split_text(text):
                yield chunks.text(i, piece)
        yield chunks.text(i, "", choice.get("finish_reason") or "stop")
