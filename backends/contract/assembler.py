"""One stream assembler per streamed answer: every frame parsed once, every fact about the stream kept once.

The router feeds it each frame it relays (it needs the text so far to continue a broken stream on
another deployment, and the finish state to know whether a break still matters); the gateway reads
it when the stream ends (the full body for the cache, the usage for accounting). Neither parses a
frame again. Plain dicts and orjson: this runs per frame.
"""

from __future__ import annotations

from typing import Any

import orjson

from backends.contract.responses import chat_choice, chat_completion, completion_choice, text_completion, tool_call

DEFAULT_FINGERPRINT = "fp_cache"


def frame_data(frame: bytes) -> bytes:
    """What follows `data:` in one SSE frame (b"" for a comment or keep-alive)."""
    start = frame.find(b"data:")
    return frame[start + 5:].strip() if start >= 0 else b""


def parse_frame(frame: bytes) -> dict[str, Any] | None:
    """The JSON object of one `data: {...}` frame; None for [DONE], comments and anything malformed."""
    return _parse(frame_data(frame))


def _parse(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(b"{"):
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return chunk if isinstance(chunk, dict) else None


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
    """Feed it every SSE frame of a chat or legacy-completion stream, in order.

    While the stream runs: `text` (choice 0's content so far), `content_frames`, `finished` (a
    finish_reason was seen), `head` (id, created, model, fingerprint of the first chunk). At the end:
    `complete`, `usage`, and `result()`, the body a non-streamed request would have got.
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self._chat: bool | None = None
        self._choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.content_frames = 0
        self.finished = False
        self.done = False
        self.errored = False
        # Kept for a reader that translates the stream (an API surface), so it need not parse frames again.
        self.keep = False
        self._kept: list[dict[str, Any]] = []

    def taken(self) -> list[dict[str, Any]]:
        """The chunks parsed since the last call (with `keep` on): those of the frames just relayed."""
        kept, self._kept = self._kept, []
        return kept

    def feed(self, frame: bytes) -> dict[str, Any] | None:
        """Take one frame; return its parsed chunk (None for [DONE] and non-JSON frames)."""
        data = frame_data(frame)
        if data.startswith(b"[DONE]"):
            self.done = True
            return None
        chunk = _parse(data)
        if chunk is not None:
            self.observe(chunk)
        return chunk

    def observe(self, chunk: dict[str, Any]) -> None:
        """Take a chunk parsed already (one that was rewritten before it was relayed)."""
        if self.keep:
            self._kept.append(chunk)
        if self.done or self.errored:
            return
        if "error" in chunk:
            self.errored = True
            return
        if not self.head:
            self.head = {"id": chunk.get("id"), "created": chunk.get("created"), "model": chunk.get("model"),
                         "system_fingerprint": chunk.get("system_fingerprint")}
            self._chat = chunk.get("object") != "text_completion"
        elif chunk.get("system_fingerprint"):
            self.head["system_fingerprint"] = chunk["system_fingerprint"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for c in chunk.get("choices") or ():
            if isinstance(c, dict):
                self._choice(c)

    def _choice(self, c: dict[str, Any]) -> None:
        index = c.get("index", 0)
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        if c.get("finish_reason"):
            choice.finish = c["finish_reason"]
            self.finished = True
        if isinstance(c.get("logprobs"), dict):
            choice.add_logprobs(c["logprobs"])
        if not self._chat:
            if c.get("text"):
                choice.text.append(c["text"])
                self.content_frames += 1
            return
        delta = c.get("delta") or {}
        if delta.get("content"):
            choice.content.append(delta["content"])
            self.content_frames += 1
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
    def text(self) -> str:
        """Choice 0's text so far: what a continuation must start from."""
        choice = self._choices.get(0)
        if choice is None:
            return ""
        return "".join(choice.content if self._chat else choice.text)

    @property
    def all_finished(self) -> bool:
        """Every choice seen so far has its finish_reason: the answer is whole even if the tail breaks."""
        return bool(self._choices) and all(c.finish for c in self._choices.values())

    @property
    def complete(self) -> bool:
        """[DONE] seen, no in-band error, and every choice finished: only then is it safe to cache."""
        return self.done and not self.errored and self.all_finished

    def result(self) -> dict[str, Any] | None:
        """The equivalent non-streamed body (usage None if the stream had none), or None if incomplete."""
        if not self.complete:
            return None
        head = dict(id=self.head["id"], created=self.head["created"], model=self.head["model"],
                    fingerprint=self.head.get("system_fingerprint") or DEFAULT_FINGERPRINT, usage=self.usage)
        if not self._chat:
            return text_completion(**head, choices=[completion_choice(i, "".join(c.text), c.finish, c.logprobs)
                                                    for i, c in sorted(self._choices.items())])
        return chat_completion(**head, choices=[self._chat_choice(i, c) for i, c in sorted(self._choices.items())])

    @staticmethod
    def _chat_choice(index: int, c: _Choice) -> dict[str, Any]:
        calls = [tool_call(t["id"], t["name"], "".join(t["args"]), t["type"]) for _, t in sorted(c.tools.items())]
        return chat_choice(index, "".join(c.content) or None, c.finish, refusal="".join(c.refusal) or None,
                           tool_calls=calls, logprobs=c.logprobs)
