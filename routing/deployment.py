"""A deployment at run time: its backend, its breaker, and what the router has learned about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from backends.base import Backend
from routing.breaker import CircuitBreaker
from routing.config import DeploymentConfig
from routing.scheduler import Scheduler, limits_for

EWMA_ALPHA = 0.3


@dataclass
class Deployment:
    config: DeploymentConfig
    backend: Backend
    breaker: CircuitBreaker
    healthy: bool = True
    in_flight: int = 0
    ewma_ttft_s: float | None = None
    successes: int = 0
    failures: int = 0
    last_error: str | None = None
    extra: dict = field(default_factory=dict)
    # Shares out the deployment's capacity (kept across reloads, like the breaker); made from the config
    # when not given.
    scheduler: Scheduler = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.scheduler is None:
            self.scheduler = Scheduler(limits_for(self.config, self.backend), self.config.name)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def context_length(self) -> int | None:
        return self.config.context_length or self.backend.context_length

    def observe_ttft(self, seconds: float) -> None:
        prev = self.ewma_ttft_s
        self.ewma_ttft_s = seconds if prev is None else EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * prev

    def price(self, prompt_tokens: int, max_tokens: int) -> float:
        """Estimated USD for one request; self-hosted models without a price cost nothing here."""
        if self.config.cost_per_mtok is not None:
            return self.config.cost_per_mtok * (prompt_tokens + max_tokens) / 1e6
        card = self.backend.card
        if card is None or card.pricing is None:
            return 0.0
        return (card.pricing.input_per_mtok * prompt_tokens + card.pricing.output_per_mtok * max_tokens) / 1e6

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What one answer cost: card prices for providers; for self-hosted deployments the instance's
        hourly price spread over its throughput (configured, else the card's measured decode speed)."""
        cfg = self.config
        if cfg.instance_price_per_hour is not None:
            card = self.backend.card
            measured = card.measured.decode_tokens_per_s if card and card.measured else None
            throughput = cfg.throughput_tokens_per_s or measured
            if throughput:
                return cfg.instance_price_per_hour / 3600.0 / throughput * (prompt_tokens + completion_tokens)
            return 0.0
        if cfg.cost_per_mtok is not None:
            return cfg.cost_per_mtok * (prompt_tokens + completion_tokens) / 1e6
        card = self.backend.card
        if card is None or card.pricing is None:
            return 0.0
        return (card.pricing.input_per_mtok * prompt_tokens + card.pricing.output_per_mtok * completion_tokens) / 1e6

    def snapshot(self) -> dict:
        out = {
            "provider": self.config.provider,
            "model": self.config.model,
            "kind": self.backend.kind,
            "healthy": self.healthy,
            "breaker": self.breaker.snapshot(),
            "in_flight": self.in_flight,
            "ewma_ttft_ms": round(self.ewma_ttft_s * 1000, 2) if self.ewma_ttft_s is not None else None,
            "successes": self.successes,
            "failures": self.failures,
            "last_error": self.last_error,
            "load_score": self.backend.load_score(),
        }
        if self.scheduler.limited:
            out["scheduler"] = self.scheduler.snapshot()
        load = getattr(self.backend, "load_snapshot", None)
        if load is not None:
            out["load"] = load()
        return out
