"""Turn a request into a plan: which route, which deployments, in what order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from backends.contract.errors import ContextLengthExceeded
from backends.contract.protocol import SamplingFields
from routing.config import Condition
from routing.deployment import Deployment
from routing.prompt_tokens import PromptTokens
from routing.runtime import Route, Runtime
from routing.strategies import STRATEGIES


@dataclass
class Plan:
    route: Route
    candidates: list[Deployment]  # in the order to try
    tokens: PromptTokens  # the one estimate of the prompt, for rules, limits and billing
    max_tokens: int  # the request's max_tokens, or usage.default_max_tokens when it names none
    # Did a rule look at the caller's key tier? If not, a plan made on a guessed tier stands.
    tier_sensitive: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.tokens.rough


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
    tokens = PromptTokens(request, runtime.config.usage.o200k_path)
    asked = request.max_output_tokens
    # What it may generate: the one estimate every TPM reservation uses (the key's, the route's, a deployment's).
    max_tokens = runtime.config.usage.default_max_tokens if asked is None else asked
    metadata = getattr(request, "metadata", None) or {}
    if not isinstance(metadata, dict):
        metadata = {}
    deployments = route.deployments
    tier_sensitive = False
    for _ in range(8):  # rules may hand over to another route; bounded against cycles
        for rule in route.config.rules:
            tier_sensitive = tier_sensitive or rule.when.key_tier is not None
            if _matches(rule.when, tokens.rough, headers, metadata, key_tier):
                if rule.route is not None:
                    route = runtime.routes[rule.route]
                    deployments = route.deployments
                    break
                deployments = [runtime.deployments[n] for n in rule.deployments or []]
                return _finish(route, deployments, tokens, max_tokens, request.prompt_field, tier_sensitive)
        else:
            break
    return _finish(route, deployments, tokens, max_tokens, request.prompt_field, tier_sensitive)


def fits(dep: Deployment, tokens: PromptTokens) -> bool:
    """Does the prompt fit `dep`'s context? Unknown contexts take anything; a prompt near the context is
    counted by the deployment's own tokenizer where it can be, else judged by the rough estimate."""
    if dep.context_length is None or tokens.surely_fits(dep.context_length):
        return True
    exact = tokens.exact_for(dep)
    return (tokens.longest if exact is None else exact) + 1 <= dep.context_length


def _finish(route: Route, deployments: list[Deployment], tokens: PromptTokens, max_tokens: int, param: str,
            tier_sensitive: bool) -> Plan:
    # Long prompts only go where they fit (when a deployment's context is known).
    fitting = [d for d in deployments if fits(d, tokens)]
    if not fitting and deployments:
        biggest = max(deployments, key=lambda d: d.context_length or 0)
        exact = tokens.exact_for(biggest)
        raise ContextLengthExceeded(
            f"The prompt ({'about ' if exact is None else ''}{tokens.longest if exact is None else exact} tokens) "
            f"is longer than any deployment of '{route.name}' can take (largest context: "
            f"{biggest.context_length} tokens).", param=param)
    ordered = STRATEGIES[route.config.strategy](fitting, tokens.rough, max_tokens)  # cost: the whole prompt
    # Deployments that failed their health check, or cannot serve right now (a local engine restarting),
    # go last: tried only when nothing else is left.
    usable = [d.healthy and d.backend.available for d in ordered]
    ordered = [d for d, ok in zip(ordered, usable) if ok] + [d for d, ok in zip(ordered, usable) if not ok]
    tokens.count_for(ordered[0] if ordered else None)
    return Plan(route, ordered, tokens, max_tokens, tier_sensitive)
