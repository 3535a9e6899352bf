"""After an answer: usage from the body or stream, cost, spend, and the TPM correction.

Kept apart from the request pipeline so the hot path reads top to bottom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from backends.aio import to_the_end
from gateway.auth import Principal
from gateway.ratelimit import LimitSpec, RateLimiter
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable
from gateway.usage import INTERACTIVE, UsageStore
from routing.deployment import Deployment
from routing.outcome import Leg

log = logging.getLogger("llm_gateway.usage")


@dataclass
class Reservation:
    """What the rate limiter holds for a request until its real usage is known."""

    subjects: list[tuple[str, LimitSpec]]
    tokens: int
    prompt_tokens: int = 0  # the estimate inside `tokens`


async def settle(*, usage: dict[str, Any] | None, fallback_completion: int, prompt_estimate: int,
                 reservation: Reservation | None, principal: Principal, route: str, deployment: Deployment | None,
                 limiter: RateLimiter, store: UsageStore, link: RedisLink,
                 served_by: str | None = None, earlier: Sequence[Leg] = (), tier: str = INTERACTIVE,
                 counted: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Record usage and spend, and give back (or take more of) the reserved tokens. Never raises.

    `usage` is the whole answer's; `earlier` the legs that other deployments served before `deployment`
    finished it (a continued stream): each leg is billed to its own deployment, the last one gets the
    rest. `tier` (the request record's) splits the usage rows; the spend against the key's budget is the
    same whatever the tier. Returns the (prompt, completion) tokens counted, for the request's log line and metrics. A
    request cancelled meanwhile (a client that left a stream) does not cut the settlement short: it runs
    on to the end in its own task, so the spend is counted and the TPM reservation is corrected all the
    same. `counted(prompt, completion)` is told the counts at once, before anything is awaited, so a caller
    that is cancelled meanwhile still has them for its log line."""
    prompt = int((usage or {}).get("prompt_tokens") or (prompt_estimate if deployment else 0))
    completion = int((usage or {}).get("completion_tokens") or (fallback_completion if deployment else 0))
    if counted is not None:
        counted(prompt, completion)
    legs = _legs(prompt, completion, deployment, earlier)
    await to_the_end(_settle(prompt, completion, legs, reservation, principal, route, limiter, store, link,
                             served_by, tier))
    return prompt, completion


def _legs(prompt: int, completion: int, last: Deployment | None,
          earlier: Sequence[Leg]) -> list[tuple[Deployment | None, int, int]]:
    """(deployment, prompt, completion) per leg, the last one holding what the earlier ones did not."""
    legs: list[tuple[Deployment | None, int, int]] = [(leg.deployment, leg.prompt_tokens, leg.completion_tokens)
                                                      for leg in earlier]
    legs.append((last, max(0, prompt - sum(p for _, p, _ in legs)), max(0, completion - sum(c for _, _, c in legs))))
    return legs


async def _settle(prompt: int, completion: int, legs: list[tuple[Deployment | None, int, int]],
                  reservation: Reservation | None, principal: Principal, route: str, limiter: RateLimiter,
                  store: UsageStore, link: RedisLink, served_by: str | None, tier: str) -> None:
    # The TPM correction first, and on its own: a failed spend write must not skip it.
    if reservation is not None:
        delta = (prompt + completion) - reservation.tokens
        try:
            if delta:
                for subject, spec in reservation.subjects:
                    if spec.tpm:
                        await limiter.adjust(subject, spec, delta)
        except StoreUnavailable as exc:
            link.record_error(exc)
        except Exception:
            log.exception("TPM correction failed")
    budget_period = principal.key.budget_period if principal.key and principal.key.budget_usd is not None else None
    try:
        for n, (dep, leg_prompt, leg_completion) in enumerate(legs):
            await store.record(key_id=principal.key_id, route=route, prompt_tokens=leg_prompt,
                               completion_tokens=leg_completion,
                               cost_usd=dep.cost_usd(leg_prompt, leg_completion) if dep is not None else 0.0,
                               budget_period=budget_period, deployment=dep.name if dep is not None else served_by,
                               requests=1 if n == len(legs) - 1 else 0, tier=tier)
    except StoreUnavailable as exc:
        link.record_error(exc)
    except Exception:  # accounting must never break an answer that was already given
        log.exception("usage accounting failed")
