"""Checks that span several parts of the config: references, duplicates, missing secrets.

They run on the parts that passed the schema (routing/config_partial.py) even when others did not; a
reference to a part left out for its schema errors (`broken`) is not reported again.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from routing import config_env, upstream_headers
from routing.config import GatewayConfig, ProviderConfig
from routing.config_partial import Broken

Problem = tuple[tuple[Any, ...], str]


_URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.\-]*://[^/@]*:[^/@]+@", re.I)  # scheme://user:password@host


def missing_secrets(config: GatewayConfig) -> list[str]:
    """Secrets the config refers to that have no value here (a warning: `check` may run elsewhere)."""
    out = []
    for name, provider in config.providers.items():
        why = config_env.problem(provider.api_key)
        if why:
            out.append(f"provider {name!r}: {why}")
        out += upstream_headers.missing(f"provider {name!r}", provider.headers)
    for dep in config.deployments:
        out += upstream_headers.missing(f"deployment {dep.name!r}", dep.headers)
    why = config_env.problem(config.redis.url)
    if why:
        out.append(f"redis.url: {why} (the gateway would run without Redis: in-process stores, one replica)")
    why = config_env.problem(config.redis.cache_url)
    if why:
        out.append(f"redis.cache_url: {why} (the response cache would share redis.url)")
    return out


def semantic_problems(config: GatewayConfig, known_cards: set[str] | None,
                      broken: Broken | None = None) -> list[Problem]:
    broken = broken or Broken()
    return [*_models(config, known_cards), *_providers(config), *_deployments(config, known_cards, broken),
            *_routes(config, broken), *_redis(config), *_server(config)]


def _server(config: GatewayConfig) -> Iterator[Problem]:
    cors = config.server.cors
    if cors is not None and cors.allow_credentials and "*" in cors.allow_origins:
        # Browsers refuse credentials with `Access-Control-Allow-Origin: *`; echoing every origin instead
        # would let any page on the web call the gateway as its user.
        yield ("server", "cors", "allow_credentials"), ("allow_credentials: true cannot go with allow_origins "
                                                        "['*']: list the origins, or set it false")


def _redis(config: GatewayConfig) -> Iterator[Problem]:
    for field in ("url", "cache_url"):
        if _URL_PASSWORD.match(getattr(config.redis, field) or ""):
            yield ("redis", field), "a URL with a password must be a ${ENV_VAR} reference, not a literal"


def _models(config: GatewayConfig, known_cards: set[str] | None) -> Iterator[Problem]:
    seen: set[str] = set()
    for i, model in enumerate(config.models):
        loc = ("models", i, "card")
        if known_cards is not None and model.card not in known_cards:
            yield loc, f"no model card with id {model.card!r} (known: {', '.join(sorted(known_cards))})"
        if model.card in seen:
            yield loc, f"model {model.card!r} is listed twice"
        seen.add(model.card)


def _providers(config: GatewayConfig) -> Iterator[Problem]:
    for name, provider in config.providers.items():
        if name == "local":
            yield ("providers", name), "'local' is reserved for the llama.cpp models under 'models'"
        yield from upstream_headers.problems(("providers", name, "headers"), provider.headers, provider)
        yield from _kind_settings(name, provider)
        key = provider.api_key
        if key is None:
            continue
        if not config_env.is_reference(key):
            yield (("providers", name, "api_key"),
                   "give the key as a reference (${ENV_VAR} or ${file:/path}), not a literal")


_AZURE_PATH = re.compile(r"^https?://[^/]+/+openai(/|$)", re.I)


def _kind_settings(name: str, provider: ProviderConfig) -> Iterator[Problem]:
    if provider.api_version is not None and provider.kind != "azure":
        yield ("providers", name, "api_version"), "api_version is for kind azure only"
    if provider.kind == "azure" and _AZURE_PATH.match(provider.base_url):
        yield (("providers", name, "base_url"),
               "give the resource's root (https://{resource}.openai.azure.com): the gateway adds /openai/... "
               "itself, and api_version: v1 picks the v1 API")


def _deployments(config: GatewayConfig, known_cards: set[str] | None, broken: Broken) -> Iterator[Problem]:
    local = {m.card for m in config.models}
    named_local, providers = local | broken.named("models"), {*config.providers, *broken.named("providers")}
    seen: set[str] = set()
    for i, dep in enumerate(config.deployments):
        if dep.name in seen:
            yield ("deployments", i, "name"), f"deployment {dep.name!r} is defined twice"
        seen.add(dep.name)
        if dep.provider == "local":
            if dep.model not in local and not broken.covers("models", dep.model):
                yield ("deployments", i, "model"), (f"no local model {dep.model!r} under 'models' "
                                                    f"(local: {', '.join(sorted(named_local)) or 'none'})")
            if dep.headers:
                yield ("deployments", i, "headers"), "a local model is not called over HTTP: it takes no headers"
        else:
            if dep.provider not in config.providers and not broken.covers("providers", dep.provider):
                yield ("deployments", i, "provider"), (f"no provider {dep.provider!r} (known: "
                                                       f"{', '.join(sorted(providers)) or 'none'}, local)")
            yield from upstream_headers.problems(("deployments", i, "headers"), dep.headers,
                                                 config.providers.get(dep.provider))
        if dep.card is not None and known_cards is not None and dep.card not in known_cards:
            yield ("deployments", i, "card"), f"no model card with id {dep.card!r}"


def _routes(config: GatewayConfig, broken: Broken) -> Iterator[Problem]:
    deployments = {d.name for d in config.deployments}
    routes = {r.name for r in config.routes}
    names: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        for j, name in enumerate([route.name, *route.aliases]):
            loc = ("routes", i, "name") if j == 0 else ("routes", i, "aliases", j - 1)
            if name in names:
                yield loc, f"model name {name!r} is already used by another route"
            names[name] = i
        for j, dep in enumerate(route.deployments):
            if dep not in deployments and not broken.covers("deployments", dep):
                yield ("routes", i, "deployments", j), f"no deployment named {dep!r}"
        if route.strategy == "weighted" and not broken.any_of("deployments", route.deployments) and not any(
                d.weight > 0 for d in config.deployments if d.name in route.deployments):
            yield ("routes", i, "strategy"), "a weighted route needs at least one deployment with weight > 0"
        for k, rule in enumerate(route.rules):
            if rule.route is not None and rule.route not in routes and not broken.covers("routes", rule.route):
                yield ("routes", i, "rules", k, "route"), f"no route named {rule.route!r}"
            for j, dep in enumerate(rule.deployments or []):
                if dep not in deployments and not broken.covers("deployments", dep):
                    yield ("routes", i, "rules", k, "deployments", j), f"no deployment named {dep!r}"
    if config.default_route is not None and config.default_route not in routes \
            and not broken.covers("routes", config.default_route):
        yield ("default_route",), f"no route named {config.default_route!r}"
