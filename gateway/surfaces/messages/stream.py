"""A chat completion stream -> Anthropic's Messages event stream.

`message_start` and a `ping` open it; the first text delta opens a `text` block (`content_block_start`),
each later one is a `text_delta`; each tool call opens a `tool_use` block whose argument deltas follow
as `input_json_delta`s, never dropped and never re-cut; a block is stopped when the next one opens. The
end of the chat stream stops the open block and sends `message_delta` (the `stop_reason` and the usage,
input tokens included) and `message_stop`. An in-band chat error becomes an `error` event. The chat
chunks come parsed by the router's assembler (one parse per frame), or are parsed here for a cache replay. An Anthropic deployment's own events (backends.contract.native) are sent as they came.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from backends.contract.native import ANTHROPIC_FIELD
from gateway.surfaces.messages import translate
from gateway.surfaces.messages.protocol import MessagesRequest
from gateway.surfaces.reshape import ChunkReader, parse_chunks
from gateway.surfaces.sse import event


class MessageEvents:
    """The state of one streamed message: the open block, its index, and what the end must say."""

    def __init__(self, req: MessagesRequest) -> None:
        self.req = req
        self.model = req.model
        self.id = translate.new_id("msg")
        self.blocks = 0  # blocks opened so far; the open one is blocks - 1
        self._open: str | None = None  # "text", or the chat tool-call index of the open tool_use block
        self._calls: set[int] = set()
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.failed = False
        self.native_done = False  # an Anthropic deployment's own stream ended it (message_stop sent)

    def start(self, model: str | None = None) -> bytes:
        self.model = model or self.model
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}  # the real counts come in message_delta
        return event("message_start", {"type": "message_start", "message": message}) + event("ping", {"type": "ping"})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        native = chunk.get(ANTHROPIC_FIELD)
        if native is not None:  # an Anthropic deployment's own events: sent as they came
            return self._native(native)
        if "error" in chunk:
            self.failed = True
            return event("error", translate.in_band_error(chunk["error"]))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.append(self._text(delta["content"]))
            for call in delta.get("tool_calls") or ():
                out.append(self._call(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _native(self, events: list[dict[str, Any]]) -> bytes:
        """Relay upstream events unchanged, keeping the block count and the open block, so that frames a
        fallback sends after a break continue the same message."""
        out = []
        for ev in events:
            kind = ev.get("type")
            if kind == "content_block_start":
                self.blocks = int(ev.get("index", self.blocks)) + 1
                block = ev.get("content_block") or {}
                self._open = "text" if block.get("type") == "text" else f"native:{self.blocks - 1}"
            elif kind == "content_block_stop":
                self._open = None
            elif kind == "message_stop":
                self.native_done = True
            out.append(event(str(kind), ev))
        return b"".join(out)

    def _begin(self, block: dict[str, Any], key: str) -> bytes:
        out = self._stop()
        self._open = key
        self.blocks += 1
        return out + event("content_block_start", {"type": "content_block_start", "index": self.blocks - 1,
                                                   "content_block": block})

    def _stop(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta})

    def _text(self, text: str) -> bytes:
        out = b"" if self._open == "text" else self._begin({"type": "text", "text": ""}, "text")
        return out + self._delta({"type": "text_delta", "text": text})

    def _call(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        key = f"tool:{index}"
        out = b""
        if index not in self._calls:
            self._calls.add(index)
            out = self._begin({"type": "tool_use", "id": call.get("id") or translate.new_id("toolu"),
                               "name": fn.get("name") or "", "input": {}}, key)
        elif self._open != key:
            return b""  # a late fragment of a call whose block is closed; chat streams do not interleave calls
        if fn.get("arguments"):
            out += self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
        return out

    def end(self) -> bytes:
        if self.native_done:
            return b""
        usage = translate.usage(self.usage)
        return (self._stop()
                + event("message_delta", {"type": "message_delta",
                                          "delta": {"stop_reason": translate.stop_reason(self.finish or "stop"),
                                                    "stop_sequence": None},
                                          "usage": usage})
                + event("message_stop", {"type": "message_stop"}))


async def events(frames: AsyncIterator[bytes], state: MessageEvents,
                 chunks_of: ChunkReader = parse_chunks) -> AsyncIterator[bytes]:
    """Relay a chat SSE stream as Messages events; the chat stream is always read to its end or closed."""
    try:
        started = False
        async for chunk in frames:
            if state.failed:
                continue  # after the error event nothing more is said; the chat stream still settles
            out = []
            for parsed in chunks_of(chunk):
                if not started:
                    started = True
                    if ANTHROPIC_FIELD not in parsed:  # an Anthropic deployment sends its own message_start
                        out.append(state.start(parsed.get("model")))
                out.append(state.feed(parsed))
            if out:
                yield b"".join(out)
        if state.failed:
            return
        if not started:
            yield state.start()
        yield state.end()
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
