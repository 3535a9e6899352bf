"""The one small async interface every engine and provider sits behind.

A backend takes a validated OpenAI request and returns either a complete
OpenAI response body (a dict) or a stream of ready-to-send SSE frames
(bytes). Streaming methods return only once the first frame exists, so any
failure before the first token is an ordinary exception the caller can turn
into an HTTP error (or, later, fail over on) before a single byte is sent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Literal

from gateway.model_cards import ModelCard
from gateway.protocol import ChatCompletionRequest, CompletionRequest

BackendState = Literal["loading", "ready", "failed", "stopped"]


@dataclass
class BackendStatus:
    name: str
    kind: str
    state: BackendState
    required: bool = True
    detail: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "state": self.state, "required": self.required}
        if self.detail:
            out["detail"] = self.detail
        if self.stats:
            out["stats"] = self.stats
        return out


SSEStream = AsyncIterator[bytes]


class Backend(abc.ABC):
    """A model endpoint. `name` is the model id clients see; `card` describes it."""

    kind: str = "abstract"

    def __init__(self, name: str, card: ModelCard, *, required: bool = True) -> None:
        self.name = name
        self.card = card
        self.required = required

    @abc.abstractmethod
    async def start(self) -> None:
        """Load or connect. Called once, from the app's lifespan, in a background task."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release threads, sockets and memory."""

    @abc.abstractmethod
    def status(self) -> BackendStatus: ...

    @property
    def context_length(self) -> int:
        """The context this deployment actually serves (may be less than the card's maximum)."""
        return self.card.context_length

    @abc.abstractmethod
    async def chat(self, request: ChatCompletionRequest, request_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def chat_stream(self, request: ChatCompletionRequest, request_id: str) -> SSEStream: ...

    @abc.abstractmethod
    async def completion(self, request: CompletionRequest, request_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def completion_stream(self, request: CompletionRequest, request_id: str) -> SSEStream: ...
