"""Order a route's deployments for one request. Each strategy is a plain function of explicit inputs."""

from __future__ import annotations

import random
from typing import Callable

from routing.deployment import Deployment


def priority(deps: list[Deployment], prompt_tokens: int, max_tokens: int) -> list[Deployment]:
    return list(deps)


def weighted(deps: list[Deployment], prompt_tokens: int, max_tokens: int,
             rng: random.Random | None = None) -> list[Deployment]:
    """A weighted draw without replacement: the first pick follows the weights, failover follows too."""
    rng = rng or random
    pool = [d for d in deps if d.config.weight > 0]
    order: list[Deployment] = []
    while pool:
        total = sum(d.config.weight for d in pool)
        x = rng.random() * total
        for d in pool:
            x -= d.config.weight
            if x < 0:
                break
        order.append(d)
        pool.remove(d)
    return order + [d for d in deps if d.config.weight <= 0]


def least_busy(deps: list[Deployment], prompt_tokens: int, max_tokens: int) -> list[Deployment]:
    """Fewest in flight from this gateway, plus the backend's own queue (vLLM waiting + KV-cache use)."""
    return sorted(deps, key=lambda d: d.in_flight + d.backend.load_score())


def lowest_latency(deps: list[Deployment], prompt_tokens: int, max_tokens: int) -> list[Deployment]:
    """Lowest EWMA of time to first token; unmeasured deployments go first so they get measured."""
    return sorted(deps, key=lambda d: -1.0 if d.ewma_ttft_s is None else d.ewma_ttft_s)


def cheapest(deps: list[Deployment], prompt_tokens: int, max_tokens: int) -> list[Deployment]:
    return sorted(deps, key=lambda d: d.price(prompt_tokens, max_tokens))


STRATEGIES: dict[str, Callable[[list[Deployment], int, int], list[Deployment]]] = {
    "priority": priority,
    "weighted": weighted,
    "least-busy": least_busy,
    "lowest-latency": lowest_latency,
    "cost": cheapest,
}
