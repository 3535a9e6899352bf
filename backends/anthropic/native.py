"""The Messages API passed through to Anthropic (see backends.contract.native).

The client's own body goes upstream with only the deployment's model and the stream flag set (and the
deployment's parameter overrides applied), so every Anthropic field the chat contract has no word for
(thinking, cache_control breakpoints, citations, beta fields) arrives as written; the answer keeps
Anthropic's own message and events for the surface to send back unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson

from backends.contract.native import ANTHROPIC_FIELD, ANTHROPIC_MESSAGES
from backends.contract.protocol import ChatCompletionRequest
from backends.contract.responses import ChatChunks

# Deployment parameter overrides (chat names) -> the Messages API's names.
_PARAMS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_tokens": "max_tokens",
           "max_completion_tokens": "max_tokens", "stop": "stop_sequences"}


def native_body(request: ChatCompletionRequest, *, model: str, params: Mapping[str, Any],
                stream: bool) -> dict[str, Any] | None:
    """The upstream body when `request` arrived as a Messages request, else None."""
    body = request.native_body(ANTHROPIC_MESSAGES)
    if body is None:
        return None
    for name, value in params.items():
        if name in _PARAMS:
            body[_PARAMS[name]] = [value] if name == "stop" and isinstance(value, str) else value
    body["model"] = model
    body["stream"] = stream
    return body


def with_message(chat: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    chat[ANTHROPIC_FIELD] = message
    return chat


class EventCarrier:
    """Puts each upstream event on the chat frames it produced (see backends.contract.native)."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] = []

    def carry(self, event: dict[str, Any], frames: list[bytes], chunks: ChatChunks | None) -> list[bytes]:
        self._pending.append(event)
        out: list[bytes] = []
        for frame in frames:
            if not frame.startswith(b"data: {"):
                out.append(frame)  # [DONE]
                continue
            out.append(_attach(frame, self._pending))
            self._pending = []
        if self._pending and chunks is not None:  # an event with no chat equivalent rides an empty delta
            out.append(_attach(chunks.frame(0, {}), self._pending))
            self._pending = []
        return out


def _attach(frame: bytes, events: list[dict[str, Any]]) -> bytes:
    """`data: {...}\\n\\n` -> `data: {..., "x_anthropic": [...]}\\n\\n`."""
    body = frame.rstrip(b"\n")
    return body[:-1] + b',"' + ANTHROPIC_FIELD.encode() + b'":' + orjson.dumps(events) + b"}\n\n"
