"""What a routed request came to: the types the router fills in and the gateway reads.

Kept below the router's logic (as httpx keeps its models below its client), so the HTTP layer and
accounting import the shapes without the machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import Body, SSEStream
from backends.contract.assembler import StreamAssembler
from backends.contract.errors import GatewayError
from routing.deployment import Deployment
from routing.scheduler import Slot


@dataclass(frozen=True)
class Leg:
    """What one deployment produced of a streamed answer that another deployment went on with: its
    prompt (the request's, plus the text already relayed when it was itself a continuation) and the
    content it relayed, counted by frames when the leg broke off before its own usage came."""

    deployment: Deployment
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Outcome:
    """What the HTTP layer needs to answer: a body or a stream, and the headers' facts."""

    body: Body | None = None
    stream: SSEStream | None = None
    deployment: str = "-"  # the name for headers and logs: a deployment, or "last-resort"
    served_by: Deployment | None = None  # the deployment that answered (the last one, after a continuation)
    attempts: int = 0
    backend_wait_s: float = 0.0  # time spent waiting on backends before the answer started
    degraded: str | None = None
    errors: list[str] = field(default_factory=list)
    # Fed every frame the stream relays (text so far, finish, usage, the full body at the end); the
    # gateway reads it for the cache and for accounting instead of parsing the frames again.
    assembler: StreamAssembler = field(default_factory=StreamAssembler)
    legs: list[Leg] = field(default_factory=list)  # deployments that served part of the stream before `served_by`
    stream_error: GatewayError | None = None  # why the stream ended with an in-band error, if it did
    queue_wait_s: float = 0.0  # time spent waiting for capacity (a deployment's slot, a concurrency limit)
    caller_deadline: float | None = None  # the caller's own deadline (time.monotonic), if sooner than the route's
    slot: Slot | None = None  # the streaming deployment's slot, held to the stream's last chunk

    def release_slot(self) -> None:
        """Give back the streaming deployment's slot (once; later calls do nothing). The relay calls it when
        a leg ends, and the gateway once more when the response is over, however it ended."""
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.release()
