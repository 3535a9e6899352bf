"""The one small async interface every engine and provider sits behind.

A backend takes a validated OpenAI request and returns either a complete
OpenAI response body (a dict, or raw JSON bytes passed through untouched) or
a stream of ready-to-send SSE frames (bytes, each ending in a blank line, the
last one `data: [DONE]`).

Streaming methods return only once the first frame exists, so any failure
before the first token is an ordinary exception that the router can fail
over on before a single byte reaches the client. A failure after that is
raised from the iterator (never written into the stream by the backend): the
router decides whether to continue elsewhere or to end the stream with an
in-band error.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Literal

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from backends.model_cards import ModelCard

BackendState = Literal["loading", "ready", "restarting", "failed", "stopped"]
# Each item holds one or more complete SSE frames (`data: ...\n\n`): frames that arrived from an
# upstream in one read stay together, so the gateway writes them to its client in one send.
SSEStream = AsyncIterator[bytes]
Body = dict[str, Any] | bytes


@dataclass
class BackendStatus:
    name: str
    kind: str
    state: BackendState
    required: bool = True
    detail: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific facts (a local engine's restarts...)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "state": self.state, "required": self.required}
        if self.detail:
            out["detail"] = self.detail
        if self.stats:
            out["stats"] = self.stats
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Capacity:
    """How many requests a backend serves at once, as the router's scheduler should count them."""

    slots: int  # requests served together (a local engine's sequences: `parallel` x instances)
    queue: int | None = None  # the waiting room it would keep itself (None: no bound of its own)
    # An interactive or near-real-time request takes a batch sequence's slot within a decode step, so
    # the slots batch requests hold do not keep the more urgent classes waiting.
    preempts_batch: bool = False


@dataclass
class CallContext:
    """Per-attempt settings the router hands a backend."""

    request_id: str = "-"
    connect_timeout: float | None = None  # seconds to open a connection
    read_timeout: float | None = None  # seconds to the first byte, and between stream chunks
    continue_from: str | None = None  # partial assistant text the answer must continue
    params: dict[str, Any] = field(default_factory=dict)  # deployment parameter overrides


class Backend(abc.ABC):
    """A model endpoint. `name` is what it is called in logs and metrics; `card` describes the model."""

    kind: str = "abstract"
    # Can this backend continue a partial assistant message (for mid-stream failover)?
    supports_continuation: bool = False
    # Set once start() has been scheduled, so a reload never starts (loads) a backend twice.
    started: bool = False

    def __init__(self, name: str, card: ModelCard | None, *, required: bool = True) -> None:
        self.name = name
        self.card = card
        self.required = required

    @abc.abstractmethod
    async def start(self) -> None:
        """Load or connect. Called once, from the app's lifespan or a reload, in a background task."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release threads, sockets and memory."""

    @abc.abstractmethod
    def status(self) -> BackendStatus: ...

    @property
    def available(self) -> bool:
        """Can it take a request now? Routing moves a deployment that cannot to the back at once,
        without waiting for the next health check (a local engine that just died, say)."""
        return True

    async def probe(self) -> bool:
        """Active health check; the default trusts `status()`."""
        return self.status().state == "ready"

    def estimate_tokens(self, request: Any) -> int | None:
        """Prompt tokens by the deployment's own tokenizer, when it has one here (local models)."""
        return None

    def capacity(self) -> Capacity | None:
        """What it serves at once when the deployment does not say (`max_concurrency`); None: unknown,
        and unlimited for the scheduler (a provider's own limits answer 429, and the router fails over)."""
        return None

    def load_score(self) -> float:
        """Queue pressure for `least-busy` routing, beyond the router's own in-flight count."""
        return 0.0

    @property
    def context_length(self) -> int | None:
        """The context this deployment actually serves, when known."""
        return self.card.context_length if self.card else None

    @abc.abstractmethod
    async def chat(self, request: ChatCompletionRequest, ctx: CallContext) -> Body: ...

    @abc.abstractmethod
    async def chat_stream(self, request: ChatCompletionRequest, ctx: CallContext) -> SSEStream: ...

    @abc.abstractmethod
    async def completion(self, request: CompletionRequest, ctx: CallContext) -> Body: ...

    @abc.abstractmethod
    async def completion_stream(self, request: CompletionRequest, ctx: CallContext) -> SSEStream: ...

    async def embeddings(self, request: EmbeddingRequest, ctx: CallContext) -> Body:
        """`POST /v1/embeddings`; a backend whose model embeds overrides it. Not retryable elsewhere: a
        client mistake (asking a chat model for vectors), not an outage."""
        raise InvalidRequest(f"The model '{request.model}' does not support embeddings.", param="model",
                             code="unsupported_model")

    def answer(self, request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest,
               ctx: CallContext) -> Awaitable[Any]:
        """The one entry routing calls: the request says which endpoint it is for and whether it
        streams, and this picks the method (`Body` for a plain answer, `SSEStream` for a stream)."""
        if request.endpoint == "embeddings":
            return self.embeddings(request, ctx)  # type: ignore[arg-type]
        if request.is_chat:
            return self.chat_stream(request, ctx) if request.stream else self.chat(request, ctx)  # type: ignore[arg-type]
        return (self.completion_stream(request, ctx) if request.stream  # type: ignore[arg-type]
                else self.completion(request, ctx))  # type: ignore[arg-type]
