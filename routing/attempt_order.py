"""Which deployment a request tries next, and how long it waits first.

The order, within one request: the same deployment again on a retryable error, up
to the route's `retry_same` times, then the next deployment in plan order, cycling
back to the first once every one had its turn. A deployment that timed out is not
asked again in this request (it would cost the same wait). A deployment whose context was too
small for the prompt is dropped, with every deployment whose known context is no
larger. Plain code on plain state, so it is tested without processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

from backends.contract.errors import GatewayError, UpstreamTimeout
from routing.config import RetryPolicy
from routing.deployment import Deployment


def outgrown(exc: GatewayError) -> bool:
    """Did the deployment refuse the prompt as too long for its context? The request's fault, not its."""
    return exc.status_code == 400 and exc.code == "context_length_exceeded"


def silent(exc: GatewayError | None) -> bool:
    """A timeout: the deployment said nothing in time, and asking it again costs the same wait."""
    return isinstance(exc, UpstreamTimeout)


@dataclass
class AttemptOrder:
    """One request's walk through its candidates (kept in plan order)."""

    candidates: list[Deployment]
    retry_same: int = 0
    current: int | None = None  # index of the deployment tried last
    streak: int = 0  # attempts in a row on it
    dropped: set[str] = field(default_factory=set)  # never again in this request

    def next(self, last: GatewayError | None) -> Deployment | None:
        """The deployment to try after `last` failed on the current one (None: the first attempt), or None
        when none is left. Claims what it returns from the breaker (`allow`), as every attempt must."""
        if self.current is not None and silent(last):
            self.dropped.add(self.candidates[self.current].name)  # silent once: not asked again
        if self.current is not None and self._again(last):
            dep = self.candidates[self.current]
            if dep.breaker.allow():
                self.streak += 1
                return dep
        start = 0 if self.current is None else self.current + 1
        n = len(self.candidates)
        for k in range(n):
            i = (start + k) % n
            dep = self.candidates[i]
            if dep.name in self.dropped or (i == self.current and silent(last)):
                continue
            if dep.breaker.allow():
                self.current, self.streak = i, 1
                return dep
        return None

    def _again(self, last: GatewayError | None) -> bool:
        """Retry the current deployment? On a retryable answer (not silence), `retry_same` times at most."""
        dep = self.candidates[self.current] if self.current is not None else None
        return (dep is not None and last is not None and last.retryable and not silent(last)
                and self.streak <= self.retry_same and dep.name not in self.dropped)

    def instead_of(self, dep: Deployment, fits: Callable[[Deployment], bool]) -> Deployment | None:
        """The first other deployment after `dep`, in plan order (cycling), that `fits` and its breaker lets
        through (claimed, as `next` does), now the current one; None when there is none. `dep` stays in
        the order: a later turn may come back to it."""
        n = len(self.candidates)
        start = next((i for i, d in enumerate(self.candidates) if d is dep), -1) + 1
        for k in range(n):
            i = (start + k) % n
            other = self.candidates[i]
            if other is dep or other.name in self.dropped or not fits(other):
                continue
            if other.breaker.allow():
                self.current, self.streak = i, 1
                return other
        return None

    def drop(self, dep: Deployment) -> None:
        """Never try `dep` again in this request (its wait would not fit in the deadline)."""
        self.dropped.add(dep.name)

    def outgrow(self, dep: Deployment) -> None:
        """`dep`'s context was too small: drop it and every deployment whose known context is no larger.
        A deployment of unknown context may still fit, and stays."""
        self.dropped.add(dep.name)
        limit = dep.context_length
        if limit is None:
            return
        self.dropped.update(d.name for d in self.candidates
                            if d.context_length is not None and d.context_length <= limit)

    def left(self) -> list[Deployment]:
        """The candidates not dropped (for logs and tests)."""
        return [d for d in self.candidates if d.name not in self.dropped]


def wait_before(policy: RetryPolicy, tries: int, retry_after: float | None, rng: random.Random) -> float:
    """Seconds between a deployment's failure and its next attempt, after `tries` attempts on it.

    Exponential backoff with jitter, never under `backoff_base_s` (two attempts on one deployment are
    always that far apart), and at least what it asked for in `Retry-After`, up to `retry_after_cap_s`."""
    backoff = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** max(0, tries - 1))
    delay = max(policy.backoff_base_s, backoff * (0.5 + rng.random() / 2))
    if retry_after:
        delay = max(delay, min(retry_after, policy.retry_after_cap_s))
    return delay
