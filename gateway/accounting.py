"""After an answer: usage from the body or stream, cost, spend, and the TPM correction.

Kept apart from the request pipeline so the hot path reads top to bottom.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from gateway.auth import Principal
from gateway.ratelimit import LimitSpec, RateLimiter
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable
from gateway.usage import UsageStore
from routing.deployment import Deployment

log = logging.getLogger("llm_gateway.usage")


@dataclass
class Reservation:
    """What the rate limiter holds for a request until its real usage is known."""

    subjects: list[tuple[str, LimitSpec]]
    tokens: int
    prompt_tokens: int = 0  # the estimate inside `tokens`


_unfinished: set[asyncio.Task] = set()  # settlements that outlived a cancelled request


async def settle(*, usage: dict[str, Any] | None, fallback_completion: int, prompt_estimate: int,
                 reservation: Reservation | None, principal: Principal, route: str, deployment: Deployment | None,
                 limiter: RateLimiter, store: UsageStore, link: RedisLink,
                 served_by: str | None = None) -> tuple[int, int]:
    """Record usage and spend, and give back (or take more of) the reserved tokens. Never raises.

    Returns the (prompt, completion) tokens counted, for the request's log line and metrics. A request
    cancelled meanwhile (a client that left a stream) does not cut the settlement short: it runs on to the
    end in its own task, so the spend is counted and the TPM reservation is corrected all the same."""
    prompt = int((usage or {}).get("prompt_tokens") or (prompt_estimate if deployment else 0))
    completion = int((usage or {}).get("completion_tokens") or (fallback_completion if deployment else 0))
    cost = deployment.cost_usd(prompt, completion) if deployment is not None else 0.0
    work = asyncio.ensure_future(_settle(prompt, completion, cost, reservation, principal, route, deployment,
                                         limiter, store, link, served_by))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:
        if not work.done():
            _unfinished.add(work)
            work.add_done_callback(_unfinished.discard)
        raise
    return prompt, completion


async def _settle(prompt: int, completion: int, cost: float, reservation: Reservation | None, principal: Principal,
                  route: str, deployment: Deployment | None, limiter: RateLimiter, store: UsageStore,
                  link: RedisLink, served_by: str | None) -> None:
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
    try:
        await store.record(key_id=principal.key_id, route=route, prompt_tokens=prompt, completion_tokens=completion,
                           cost_usd=cost,
                           budget_period=principal.key.budget_period
                           if principal.key and principal.key.budget_usd is not None else None,
                           deployment=deployment.name if deployment is not None else served_by)
    except StoreUnavailable as exc:
        link.record_error(exc)
    except Exception:  # accounting must never break an answer that was already given
        log.exception("usage accounting failed")
