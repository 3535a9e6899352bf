"""A chat completion stream -> the Responses API's typed event stream.

Chat deltas map onto Responses events one for one: the first text delta opens an output `message` item
and its `output_text` part, each later one is an `output_text.delta`; each tool call opens a
`function_call` item whose argument deltas follow as `function_call_arguments.delta`. The end of the
chat stream closes whatever is open (`...done` events, in order) and sends `response.completed` (or
`response.incomplete`) with the usage. An in-band chat error becomes an `error` event and
`response.failed`. Every event carries the next `sequence_number`. The chat chunks come parsed (the
router's assembler parsed each frame once), or are parsed here for a cache replay.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable

from gateway.surfaces.reshape import ChunkReader, parse_chunks
from gateway.surfaces.responses import translate
from gateway.surfaces.responses.protocol import ResponsesRequest
from gateway.surfaces.sse import event


class ResponseEvents:
    """The state of one streamed response: the items so far and the next sequence number."""

    def __init__(self, req: ResponsesRequest, resp_id: str, created_at: int) -> None:
        self.req, self.id, self.created_at = req, resp_id, created_at
        self.model = req.model
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # every item, open or closed, by output_index
        self._text: dict[str, Any] | None = None  # the open message item
        self._text_parts: list[str] = []
        self._logprobs: list[dict[str, Any]] = []  # the open text's, when asked for
        self._calls: dict[int, dict[str, Any]] = {}  # open function_call items by the chat tool-call index
        self.finish: str | None = None
        self.usage: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  # the finished response object, once the stream completed

    def _event(self, kind: str, /, **fields: Any) -> bytes:
        data = {"type": kind, **fields, "sequence_number": self.seq}
        self.seq += 1
        return event(kind, data)

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return translate.response_object(self.req, self.id, self.created_at, model=self.model, status=status,
                                         output=self.output, **extra)

    def start(self) -> bytes:
        shell = self._snapshot("in_progress")
        shell["output"] = []
        return (self._event("response.created", response=shell)
                + self._event("response.in_progress", response=shell))

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """One chat chunk's events (often one event, sometimes none)."""
        if "error" in chunk:
            return self.fail(chunk["error"])
        if chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a Response has one answer; n > 1 is not a Responses parameter
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                out.append(self._text_delta(text, (choice.get("logprobs") or {}).get("content") or []))
            for call in delta.get("tool_calls") or ():
                out.append(self._call_delta(call))
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str, logprobs: list[dict[str, Any]]) -> bytes:
        out = b""
        if self._text is None:
            out = self._close_calls()
            item = {"id": translate.new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                    "content": []}
            self._text, self._text_parts, self._logprobs = item, [], []
            self.output.append(item)
            index = len(self.output) - 1
            out += self._event("response.output_item.added", output_index=index, item={**item, "content": []})
            out += self._event("response.content_part.added", item_id=item["id"], output_index=index,
                               content_index=0, part=translate.output_text(""))
        self._text_parts.append(text)
        self._logprobs += logprobs
        return out + self._event("response.output_text.delta", item_id=self._text["id"],
                                 output_index=self.output.index(self._text), content_index=0, delta=text,
                                 logprobs=logprobs)

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        index = call.get("index", 0)
        fn = call.get("function") or {}
        out = b""
        item = self._calls.get(index)
        if item is None:
            out = self._close_text()
            item = translate.function_call_item(translate.new_id("fc"), call.get("id") or translate.new_id("call"),
                                                fn.get("name") or "", "", "in_progress")
            self._calls[index] = item
            self.output.append(item)
            out += self._event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))
        arguments = fn.get("arguments")
        if arguments:
            item["arguments"] += arguments
            out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                               output_index=self.output.index(item), delta=arguments)
        return out

    def _close_text(self) -> bytes:
        item = self._text
        if item is None:
            return b""
        self._text = None
        text = "".join(self._text_parts)
        part = translate.output_text(text, self._logprobs)
        item["content"] = [part]
        item["status"] = self._item_status()
        index = self.output.index(item)
        return (self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=self._logprobs)
                + self._event("response.content_part.done", item_id=item["id"], output_index=index,
                              content_index=0, part=part)
                + self._event("response.output_item.done", output_index=index, item=item))

    def _close_calls(self) -> bytes:
        out = b""
        for item in self._calls.values():
            item["status"] = self._item_status()
            index = self.output.index(item)
            out += self._event("response.function_call_arguments.done", item_id=item["id"], name=item["name"],
                               output_index=index, arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=index, item=item)
        self._calls = {}
        return out

    def _item_status(self) -> str:
        return translate.status_of(self.finish)[0]

    def end(self) -> bytes:
        """The chat stream ended cleanly: close what is open, then the final response event."""
        out = self._close_text() + self._close_calls()
        status, incomplete = translate.status_of(self.finish)
        self.final = self._snapshot(status, usage=translate.usage(self.usage), incomplete=incomplete)
        name = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(name, response=self.final)

    def fail(self, error: dict[str, Any]) -> bytes:
        """An in-band error: say it, then fail the response with what it had produced."""
        message = str(error.get("message") or "The response failed.")
        code = "rate_limit_exceeded" if error.get("type") == "rate_limit_error" else "server_error"
        out = self._event("error", code=error.get("code") or code, message=message, param=error.get("param"))
        for item in self.output:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                if item["type"] == "message":
                    item["content"] = [translate.output_text("".join(self._text_parts))]
        self._text, self._calls = None, {}
        failed = self._snapshot("failed", error={"code": code, "message": message})
        failed["completed_at"] = None
        self.final = None
        self.failed = True
        return out + self._event("response.failed", response=failed)

    failed = False


async def events(frames: AsyncIterator[bytes], state: ResponseEvents, chunks_of: ChunkReader = parse_chunks,
                 on_complete: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    """Relay a chat SSE stream as Responses events; `on_complete` gets the final response (to store it).
    The chat stream is always read to its end or closed, so the gateway settles it either way."""
    try:
        yield state.start()
        async for chunk in frames:
            if state.failed:
                continue  # after response.failed nothing more is said; the chat stream still settles
            out = [state.feed(parsed) for parsed in chunks_of(chunk)]
            if out:
                yield b"".join(out)
        if state.failed:
            return
        yield state.end()
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    if on_complete is not None and state.final is not None:
        await on_complete(state.final)
