"""Anthropic stream events -> OpenAI `chat.completion.chunk` SSE frames.

One `StreamTranslator` per response. It is fed parsed events in order and
returns the frames to send. The finish chunk, the usage chunk and `[DONE]`
are only produced on `message_stop`, so a stream that breaks off early never
looks complete to the client; the caller checks `done` to tell the two apart.
"""

from __future__ import annotations

from typing import Any, Iterable

from backends.anthropic.native import EventCarrier
from backends.anthropic.translate import FINGERPRINT, error_from, finish_reason, trim_repeat, usage
from backends.contract.responses import DONE, ChatChunks


class StreamTranslator:
    def __init__(self, *, created: int, include_usage: bool, fallback_id: str = "anthropic",
                 fallback_model: str = "", skip: str = "", carrier: EventCarrier | None = None,
                 secrets: Iterable[str | None] = ()) -> None:
        self._created = created
        self._secrets = tuple(secrets)  # scrubbed from an `event: error` message
        self._include_usage = include_usage
        self._id = f"chatcmpl-{fallback_id}"
        self._model = fallback_model
        self._skip = skip  # whitespace the client already has (continuation), dropped once from the reply
        self._chunks: ChatChunks | None = None  # made on the first event: it carries the message's id and model
        self._usage: dict[str, Any] = {}
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_call index
        self._stop_reason: str | None = None
        self._carrier = carrier  # a passed-through Messages request: the events ride along their frames
        self.done = False

    def feed(self, name: str | None, data: dict[str, Any]) -> list[bytes]:
        """Frames for one event; raises UpstreamError on `event: error`."""
        frames = self._feed(name, data)
        return frames if self._carrier is None else self._carrier.carry(data, frames, self._chunks)

    def _feed(self, name: str | None, data: dict[str, Any]) -> list[bytes]:
        kind = data.get("type") or name
        if kind == "message_start":
            msg = data.get("message") or {}
            if msg.get("id"):
                self._id = f"chatcmpl-{msg['id']}"
            self._model = msg.get("model") or self._model
            self._merge_usage(msg.get("usage"))
            return self._start()
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(data.get("index"), data.get("delta") or {})
        if kind == "message_delta":
            self._stop_reason = (data.get("delta") or {}).get("stop_reason") or self._stop_reason
            self._merge_usage(data.get("usage"))
            return []
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            raise error_from(data.get("error") or {}, secrets=self._secrets)
        return []  # ping, content_block_stop, and event types added later

    # -- frames -------------------------------------------------------------

    def _start(self) -> list[bytes]:
        if self._chunks is not None:
            return []
        self._chunks = ChatChunks(id=self._id, created=self._created, model=self._model, fingerprint=FINGERPRINT,
                                  include_usage=self._include_usage)
        return [self._chunks.role(0)]

    @property
    def _out(self) -> ChatChunks:
        assert self._chunks is not None, "_start() comes first"
        return self._chunks

    def _text(self, text: str) -> list[bytes]:
        if self._skip and text:
            text, self._skip = trim_repeat(text, self._skip)
        return [self._out.content(0, text)] if text else []

    def _block_start(self, index: Any, block: dict[str, Any]) -> list[bytes]:
        frames = self._start()
        if block.get("type") == "text":
            frames += self._text(block.get("text") or "")
        elif block.get("type") == "tool_use":
            self._skip = ""
            n = self._tools[index] = len(self._tools)
            frames.append(self._out.tool_call_start(0, n, block.get("id"), block.get("name")))
        return frames

    def _delta(self, index: Any, delta: dict[str, Any]) -> list[bytes]:
        frames = self._start()
        if delta.get("type") == "text_delta":
            frames += self._text(delta.get("text") or "")
        elif delta.get("type") == "input_json_delta" and index in self._tools and delta.get("partial_json"):
            frames.append(self._out.tool_call_arguments(0, self._tools[index], delta["partial_json"]))
        return frames  # thinking, signature and citations deltas have no OpenAI equivalent

    def _finish(self) -> list[bytes]:
        if self.done:
            return []
        frames = self._start()
        frames.append(self._out.finish(0, finish_reason(self._stop_reason)))
        if self._include_usage:
            frames.append(self._out.usage_of(usage(self._usage)))
        frames.append(DONE)
        self.done = True
        return frames

    def _merge_usage(self, u: Any) -> None:
        """message_delta's counts are cumulative, so later non-null values replace earlier ones."""
        if isinstance(u, dict):
            self._usage.update({k: v for k, v in u.items() if v is not None})

    @property
    def usage(self) -> dict[str, Any]:
        return usage(self._usage)
