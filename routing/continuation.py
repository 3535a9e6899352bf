"""How a deployment may go on with another deployment's broken stream, and when a way was refused."""

from __future__ import annotations

from backends.contract.errors import GatewayError
from routing.deployment import Deployment

# The user turn that asks a model to go on with an answer it is shown as its own (`continuation: instruction`).
CONTINUE_INSTRUCTION = ("Your previous message was cut off. Continue it exactly where it stops, without repeating "
                        "anything and without any preamble.")


def continuation_ways(dep: Deployment) -> list[str]:
    """How `dep` may go on with another deployment's broken stream, in the order to try (its `continuation`)."""
    mode = dep.config.continuation
    if mode == "instruction":  # for a model that refuses a prefill: ask it to go on, else restart and splice
        return ["instruction", "restart"]
    prefill = ["prefill"] if dep.backend.supports_continuation else []
    if mode == "auto":
        return [*prefill, "restart"]
    return {"prefill": prefill, "restart": ["restart"]}.get(mode, [])


def refused(exc: GatewayError) -> bool:
    """Did a deployment refuse the way it was asked to continue (a 400 naming the prefill, say)? Any other 4xx
    that another attempt would not fix; 429 and auth failures are retryable and handled as usual."""
    return 400 <= exc.status_code < 500 and not exc.retryable
