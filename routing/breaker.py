"""A circuit breaker per deployment: closed, open, half-open.

It opens on `failure_threshold` consecutive failures, or when the failure
rate over the last `window` outcomes reaches `error_rate` (once at least
`min_requests` were seen). After `cooldown_s` it lets exactly one probe
through (half-open): success closes it, failure opens it again.

A failed probe does not buy another full cooldown: the next probe comes after
`probe_initial_s`, doubling with each failed probe up to `probe_max_s` (never
past `cooldown_s`), each delay shortened by a random fraction of up to
`probe_jitter` so replicas do not probe in step. A recovered deployment is
thus found within about `probe_max_s`, while one that stays down sees at most
one probe every `probe_max_s * (1 - probe_jitter)` seconds. A health check
that sees the deployment come back (`health_recovered`) makes it eligible for
a probe at once.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Callable, Literal

from routing.config import BreakerConfig

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self.state: State = "closed"
        self._consecutive = 0
        self._outcomes: deque[bool] = deque(maxlen=config.window)
        self._probe_at = 0.0  # while open: when the next probe may go
        self._failed_probes = 0  # since the breaker last opened from closed
        self._probe_in_flight = False
        self.opened_count = 0

    def allow(self) -> bool:
        """May a request go to this deployment now? Claims the probe slot when half-opening."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self._clock() < self._probe_at:
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
            return self._clock() >= self._probe_at
        return not self._probe_in_flight

    def record_success(self) -> None:
        self._consecutive = 0
        self._outcomes.append(True)
        if self.state != "closed":
            self.state = "closed"
            self._outcomes.clear()
            self._failed_probes = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._consecutive += 1
        self._outcomes.append(False)
        if self.state == "half_open":
            self._reopen()
            return
        if self.state == "closed" and (self._consecutive >= self.config.failure_threshold or self._rate_tripped()):
            self._open()

    def release(self) -> None:
        """An attempt ended without a verdict (e.g. the client left): free the probe slot."""
        self._probe_in_flight = False

    def health_recovered(self) -> None:
        """A health check saw the deployment come back: probe with the next request, not after the wait.

        The probe schedule stays where it was, so a health check that lies costs one probe per recovery it reports."""
        if self.state == "open":
            self._probe_at = min(self._probe_at, self._clock())

    def probe_delay(self, failed_probes: int) -> float:
        """The wait after the `failed_probes`-th failed probe in a row: growing, capped, jittered (shorter only)."""
        cfg = self.config
        base = min(cfg.probe_initial_s * 2 ** min(failed_probes - 1, 60), cfg.probe_max_s, cfg.cooldown_s)
        return base * (1 - cfg.probe_jitter * self._rng.random())

    def _rate_tripped(self) -> bool:
        n = len(self._outcomes)
        if n < self.config.min_requests:
            return False
        return self._outcomes.count(False) / n >= self.config.error_rate

    def _open(self) -> None:
        """Closed to open: the full cooldown before the first probe."""
        self.state = "open"
        self._probe_at = self._clock() + self.config.cooldown_s
        self._failed_probes = 0
        self._probe_in_flight = False
        self.opened_count += 1

    def _reopen(self) -> None:
        """A probe failed: open again, until the next step of the probe schedule."""
        self.state = "open"
        self._failed_probes += 1
        self._probe_at = self._clock() + self.probe_delay(self._failed_probes)
        self._probe_in_flight = False
        self.opened_count += 1

    def next_probe_in(self) -> float:
        """Seconds until an open breaker lets its next probe through (0 when not open)."""
        return max(0.0, self._probe_at - self._clock()) if self.state == "open" else 0.0

    def snapshot(self) -> dict:
        """What it has learned, without the clock in it (a reload compares snapshots for carry-over)."""
        return {"state": self.state, "consecutive_failures": self._consecutive,
                "recent_failure_rate": round(self._outcomes.count(False) / len(self._outcomes), 3)
                if self._outcomes else 0.0, "times_opened": self.opened_count, "failed_probes": self._failed_probes}
