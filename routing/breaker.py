"""A circuit breaker per deployment: closed, open, half-open.

It opens on `failure_threshold` consecutive failures, or when the failure
rate over the last `window` outcomes reaches `error_rate` (once at least
`min_requests` were seen). After `cooldown_s` it lets exactly one probe
through (half-open): success closes it, failure opens it again.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable, Literal

from routing.config import BreakerConfig

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.state: State = "closed"
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=config.window)
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.opened_count = 0

    def allow(self) -> bool:
        """May a request go to this deployment now? Claims the probe slot when half-opening."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() - self._opened_at < self.config.cooldown_s:
                return False
            self.state = "half_open"
            self._probe_in_flight = False
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def available(self) -> bool:
        """Like `allow` but without claiming anything: for ordering candidates."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock() - self._opened_at >= self.config.cooldown_s
        return not self._probe_in_flight

    def record_success(self) -> None:
        self._consecutive = 0
        self._outcomes.append(True)
        if self.state != "closed":
            self.state = "closed"
            self._outcomes.clear()
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._consecutive += 1
        self._outcomes.append(False)
        if self.state == "half_open":
            self._open()
            return
        if self.state == "closed" and (self._consecutive >= self.config.failure_threshold or self._rate_tripped()):
            self._open()

    def release(self) -> None:
        """An attempt ended without a verdict (e.g. the client left): free the probe slot."""
        self._probe_in_flight = False

    def _rate_tripped(self) -> bool:
        n = len(self._outcomes)
        if n < self.config.min_requests:
            return False
        return self._outcomes.count(False) / n >= self.config.error_rate

    def _open(self) -> None:
        self.state = "open"
        self._opened_at = self._clock()
        self._probe_in_flight = False
        self.opened_count += 1

    def snapshot(self) -> dict:
        return {"state": self.state, "consecutive_failures": self._consecutive,
                "recent_failure_rate": round(self._outcomes.count(False) / len(self._outcomes), 3)
                if self._outcomes else 0.0, "times_opened": self.opened_count}
