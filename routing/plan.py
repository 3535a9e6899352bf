"""Turn a request into a plan: which route, which deployments, in what order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from backends.contract.errors import ContextLengthExceeded
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from routing.config import Condition
from routing.deployment import Deployment
from routing.runtime import Route, Runtime
from routing.strategies import STRATEGIES

CHARS_PER_TOKEN = 4  # a deliberately rough estimate; exact counts need the deployment's own tokenizer


@dataclass
class Plan:
    route: Route
    candidates: list[Deployment]  # in the order to try
    prompt_tokens: int  # estimated
    max_tokens: int


def estimate_prompt_tokens(request: SamplingFields) -> int:
    if isinstance(request, ChatCompletionRequest):
        chars = 0
        for m in request.messages:
            if isinstance(m.content, str):
                chars += len(m.content)
            elif m.content:
                chars += sum(len(getattr(p, "text", "") or "") for p in m.content)
        return chars // CHARS_PER_TOKEN + 4 * len(request.messages)
    if isinstance(request, CompletionRequest):
        return sum(len(p) if isinstance(p, str) else len(p) * CHARS_PER_TOKEN
                   for p in request.prompts()) // CHARS_PER_TOKEN
    return 0


def _matches(cond: Condition, prompt_tokens: int, headers: Mapping[str, str], metadata: Mapping[str, Any],
             key_tier: str | None) -> bool:
    if cond.min_prompt_tokens is not None and prompt_tokens < cond.min_prompt_tokens:
        return False
    if cond.max_prompt_tokens is not None and prompt_tokens > cond.max_prompt_tokens:
        return False
    if cond.header and any(headers.get(k.lower()) != v for k, v in cond.header.items()):
        return False
    if cond.metadata and any(str(metadata.get(k)) != v for k, v in cond.metadata.items()):
        return False
    if cond.key_tier is not None and key_tier != cond.key_tier:
        return False
    return True


def make_plan(runtime: Runtime, request: SamplingFields, headers: Mapping[str, str],
              key_tier: str | None = None) -> Plan:
    route = runtime.resolve(request.model)
    prompt_tokens = estimate_prompt_tokens(request)
    max_tokens = getattr(request, "max_output_tokens", None) or 256
    metadata = getattr(request, "metadata", None) or {}
    param = "messages" if hasattr(request, "messages") else "prompt"  # the field an error should name
    deployments = route.deployments
    for _ in range(8):  # rules may hand over to another route; bounded against cycles
        for rule in route.config.rules:
            if _matches(rule.when, prompt_tokens, headers, metadata if isinstance(metadata, dict) else {}, key_tier):
                if rule.route is not None:
                    route = runtime.routes[rule.route]
                    deployments = route.deployments
                    break
                deployments = [runtime.deployments[n] for n in rule.deployments or []]
                return _finish(route, deployments, prompt_tokens, max_tokens, param)
        else:
            break
    return _finish(route, deployments, prompt_tokens, max_tokens, param)


def _finish(route: Route, deployments: list[Deployment], prompt_tokens: int, max_tokens: int, param: str) -> Plan:
    # Long prompts only go where they fit (when a deployment's context is known).
    fitting = [d for d in deployments if d.context_length is None or prompt_tokens + 1 <= d.context_length]
    if not fitting and deployments:
        biggest = max(d.context_length or 0 for d in deployments)
        raise ContextLengthExceeded(
            f"The prompt (about {prompt_tokens} tokens) is longer than any deployment of '{route.name}' "
            f"can take (largest context: {biggest} tokens).", param=param)
    ordered = STRATEGIES[route.config.strategy](fitting, prompt_tokens, max_tokens)
    # Deployments that failed their health check, or cannot serve right now (a local engine restarting),
    # go last: tried only when nothing else is left.
    usable = [d.healthy and d.backend.available for d in ordered]
    ordered = [d for d, ok in zip(ordered, usable) if ok] + [d for d, ok in zip(ordered, usable) if not ok]
    return Plan(route, ordered, prompt_tokens, max_tokens)
