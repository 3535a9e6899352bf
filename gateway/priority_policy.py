"""A request's scheduling class and share, decided once at admission.

The class comes from the request's `x-gateway-priority` header, else its route's `priority`, else its
key's; whichever it is, it is capped by the best class the key may use (its `priority`), so a header
can ask for less urgency, never for more than the key was given. A caller that names its class (a batch
line: BATCH) is not asked. The tenant is the key (its owner id), and the key's `weight` is its share
among the tenants waiting for the same deployment.
"""

from __future__ import annotations

from typing import Mapping

from backends.contract.errors import InvalidRequest
from backends.contract.priority import DEFAULT, PRIORITY_LABELS, Priority, Scheduling
from gateway.auth import Principal
from routing.config import RouteConfig

HEADER = "x-gateway-priority"


def key_priority(principal: Principal) -> Priority:
    """The best class the caller may use: its key's (stored checked; an unreadable one is the default)."""
    label = principal.key.priority if principal.key else None
    if not label:
        return Priority.INTERACTIVE
    try:
        return Priority.parse(label)
    except ValueError:
        return Priority.INTERACTIVE


def decide(headers: Mapping[str, str], route: RouteConfig, principal: Principal,
           forced: Priority | None = None) -> Scheduling:
    """The request's Scheduling; a header that names no class is the client's 400."""
    best = key_priority(principal)
    if forced is not None:
        asked = forced
    elif (raw := headers.get(HEADER)) is not None:
        try:
            asked = Priority.parse(raw)
        except ValueError:
            raise InvalidRequest(f"Invalid {HEADER} header {raw[:40]!r}: use one of {', '.join(PRIORITY_LABELS)}.",
                                 param=HEADER, code="invalid_priority") from None
    elif route.priority is not None:
        asked = Priority.parse(route.priority)
    else:
        asked = best
    chosen = max(asked, best)  # a lower value is more urgent: never above what the key may use
    key = principal.key
    weight = key.weight if key is not None and key.weight else 1.0
    if chosen is Priority.INTERACTIVE and weight == 1.0 and key is None and not principal.master:
        return DEFAULT  # anonymous callers (no keys): one shared object, nothing to build
    return Scheduling(chosen, principal.owner, weight)
