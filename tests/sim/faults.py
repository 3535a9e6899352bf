"""Fault descriptions for the simulated upstreams.

A ``Fault`` is pure data: the simulators interpret it per protocol (an OpenAI
429 and an Anthropic 429 have different bodies), so tests can share one fault
vocabulary across every upstream kind.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds applied before the request is answered.
LATENCY = "latency"
STATUS = "status"
RESET = "reset"
HANG = "hang"
# Kinds that shape a streamed answer (for non-streamed answers see each constructor).
CUT_STREAM = "cut_stream"
CHUNK_DELAY = "chunk_delay"
IN_BAND_ERROR = "in_band_error"
STALL = "stall"


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour; build it with the class-method constructors."""

    kind: str
    seconds: float = 0.0
    code: int = 0
    retry_after: float | None = None
    message: str | None = None
    after_chunks: int = 0

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering, then answer normally."""
        return cls(LATENCY, seconds=seconds)

    @classmethod
    def status(cls, code: int, retry_after: float | None = None, message: str | None = None) -> Fault:
        """Answer with HTTP ``code`` in the protocol's own error shape (+ ``Retry-After`` if given)."""
        return cls(STATUS, code=code, retry_after=retry_after, message=message)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the TCP connection (RST) without sending any HTTP response."""
        return cls(RESET)

    @classmethod
    def hang(cls, seconds: float = 3600.0) -> Fault:
        """Accept the request and say nothing for ``seconds``, then drop the connection."""
        return cls(HANG, seconds=seconds)

    @classmethod
    def cut_stream(cls, after_chunks: int) -> Fault:
        """Stream ``after_chunks`` content events, then drop the connection (no terminator).

        OpenAI/vLLM count the role chunk as chunk 1 (completions: text chunks);
        Anthropic counts ``content_block_delta`` events. Non-streamed requests: like ``reset``.
        """
        return cls(CUT_STREAM, after_chunks=after_chunks)

    @classmethod
    def chunk_delay(cls, seconds: float) -> Fault:
        """Sleep ``seconds`` between streamed events (non-streamed: ``seconds`` per piece, then answer)."""
        return cls(CHUNK_DELAY, seconds=seconds)

    @classmethod
    def in_band_error(cls, after_chunks: int, message: str | None = None) -> Fault:
        """Stream ``after_chunks`` content events, then an in-stream error event, then end the body.

        Non-streamed requests get the protocol's server error status instead (500; Anthropic 529).
        """
        return cls(IN_BAND_ERROR, after_chunks=after_chunks, message=message)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float) -> Fault:
        """Stream ``after_chunks`` content events, say nothing for ``seconds``, then go on to the end.

        Counted as for ``cut_stream``: for chat, ``after_chunks=1`` sends the role chunk at once and delays
        the first token. Non-streamed requests: wait ``seconds``, then answer.
        """
        return cls(STALL, after_chunks=after_chunks, seconds=seconds)

    @property
    def is_stream_fault(self) -> bool:
        """True for faults that only shape the body of an answer, not whether one starts."""
        return self.kind in (CUT_STREAM, CHUNK_DELAY, IN_BAND_ERROR, STALL)
