"""How urgent a request is, and whose it is: what the scheduler and the local engines order work by.

Three classes, as the serving spectrum has them: interactive (a user waits, under 100 ms matters), near
real time (100 ms to seconds: an agent, a pipeline step) and batch (nobody waits: the Batch API's lines).
A lower value is served first.

The gateway decides a request's class once, at admission (the key, the route, or a request header,
capped by what the key is allowed), and sets `current` for the task that serves it; routing and the
backends read it from there rather than from every signature between them. A context variable follows
the request into the tasks it starts, and never leaks to another request's task.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    INTERACTIVE = 0
    NEAR_REAL_TIME = 1
    BATCH = 2

    @property
    def label(self) -> str:
        """The name configs, headers, logs and metrics use: interactive, near-real-time, batch."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def parse(cls, value: str) -> "Priority":
        """A class by its label; ValueError names the three there are."""
        for member in cls:
            if member.label == value.strip().lower():
                return member
        raise ValueError(f"{value!r} is not a priority: use interactive, near-real-time or batch")


PRIORITY_LABELS = tuple(p.label for p in Priority)


@dataclass(frozen=True, slots=True)
class Scheduling:
    """What the scheduler needs of one request: its class, and the tenant it shares capacity with."""

    priority: Priority = Priority.INTERACTIVE
    tenant: str = "anonymous"  # the key's owner id (gateway.auth.Principal.owner): fair shares are per tenant
    weight: float = 1.0  # a tenant's share among those waiting for the same deployment


DEFAULT = Scheduling()
current: contextvars.ContextVar[Scheduling] = contextvars.ContextVar("llm_gateway_scheduling", default=DEFAULT)
