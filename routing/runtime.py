"""One immutable snapshot of the routing world: routes, deployments, backends, built from one config.

A hot reload builds a new `Runtime` and swaps it in; requests already running
keep the one they started with. Backends whose definition did not change are
carried over (a local model is never loaded twice), and so are breakers and
learned latencies, keyed by deployment name.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import orjson

from backends.base import Backend
from backends.contract.errors import ModelNotFound
from backends.http import UpstreamPool
from backends.llamacpp.control import EngineControl
from backends.model_cards import ModelCard
from routing.backend_factory import local_backend, remote_backend, upstream_pool
from routing.breaker import CircuitBreaker
from routing.config import DeploymentConfig, GatewayConfig, ProviderConfig, RetryPolicy, RouteConfig, Timeouts
from routing.deployment import Deployment
from routing.scheduler import limits_for

log = logging.getLogger("llm_gateway.routing")


@dataclass(eq=False)  # identity: a reload builds new routes, and caches key on the object
class Route:
    config: RouteConfig
    deployments: list[Deployment]
    implicit: bool = False

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Runtime:
    config: GatewayConfig
    version: int
    routes: dict[str, Route]  # by name and alias
    route_list: list[Route]
    deployments: dict[str, Deployment]
    backends: dict[str, Backend]  # by definition key, shared with later runtimes
    pools: dict[str, UpstreamPool]  # by provider definition key
    default_route: Route | None = None
    local: list[Backend] = field(default_factory=list)  # the llama.cpp models, in config order
    started: dict[str, asyncio.Task] = field(default_factory=dict)

    def resolve(self, model: str) -> Route:
        route = self.routes.get(model)
        if route is not None:
            return route
        if self.default_route is not None:
            return self.default_route
        raise ModelNotFound(model)

    def local_backends(self) -> list[Backend]:
        return list(self.local)


def _key(kind: str, *parts: Any) -> str:
    raw = orjson.dumps([kind, *parts], option=orjson.OPT_SORT_KEYS)
    return kind + ":" + hashlib.sha256(raw).hexdigest()[:16]


def build_runtime(config: GatewayConfig, cards: dict[str, ModelCard], previous: Runtime | None = None,
                  version: int = 1, control: EngineControl | None = None) -> Runtime:
    """Build (not start) a runtime, reusing what `previous` already has. `control` runs the local
    models' engine processes (None: each local backend supervises its own)."""
    old_backends = previous.backends if previous else {}
    old_pools = previous.pools if previous else {}
    old_deps = previous.deployments if previous else {}
    backends: dict[str, Backend] = {}
    pools: dict[str, UpstreamPool] = {}

    local: dict[str, Backend] = {}
    for model in config.models:
        key = _key("llamacpp", model.model_dump())
        backend = old_backends.get(key) or local_backend(model, cards[model.card], control)
        backends[key] = backend
        local[model.card] = backend

    def provider_pool(name: str, provider: ProviderConfig) -> UpstreamPool:
        key = _key("pool", provider.model_dump())
        if key not in pools:
            pools[key] = old_pools.get(key) or upstream_pool(provider)
        return pools[key]

    dep_configs = list(config.deployments)
    named = {d.name for d in dep_configs}
    for card_id in local:  # every local model is also a deployment of its own name
        if card_id not in named:
            dep_configs.append(DeploymentConfig(name=card_id, provider="local", model=card_id))

    deployments: dict[str, Deployment] = {}
    for dep in dep_configs:
        if dep.provider == "local":
            backend = local[dep.model]
        else:
            provider = config.providers[dep.provider]
            key = _key("remote", dep.provider, provider.model_dump(), dep.model, dep.card, dep.headers)
            backend = old_backends.get(key) or remote_backend(dep, provider, provider_pool(dep.provider, provider),
                                                               cards.get(dep.card) if dep.card else None)
            backends[key] = backend
        prev = old_deps.get(dep.name)
        # The same deployment keeps its scheduler, whatever its limits now: the slots its requests on the
        # old runtime hold stay counted, and a new capacity applies to them at once.
        scheduler = prev.scheduler if prev is not None and prev.backend is backend else None
        if scheduler is not None:
            scheduler.configure(limits_for(dep, backend))
        if prev is not None and prev.backend is backend and prev.breaker.config == config.breaker:
            deployment = Deployment(config=dep, backend=backend, breaker=prev.breaker, healthy=prev.healthy,
                                    ewma_ttft_s=prev.ewma_ttft_s, successes=prev.successes, failures=prev.failures,
                                    scheduler=scheduler)
        else:
            deployment = Deployment(config=dep, backend=backend, breaker=CircuitBreaker(config.breaker),
                                    scheduler=scheduler)
        deployments[dep.name] = deployment

    routes: dict[str, Route] = {}
    route_list: list[Route] = []
    for rc in config.routes:
        route = Route(rc, [deployments[n] for n in rc.deployments])
        route_list.append(route)
        for name in [rc.name, *rc.aliases]:
            routes[name] = route
    for card_id in local:  # local models stay addressable by their own names
        card = cards[card_id]
        if card_id in routes:
            continue
        # One local deployment and no fallback: the engine's own bounded queue is the waiting room, so a
        # full queue is answered at once (503 + Retry-After) rather than retried here.
        model_cfg = next(m for m in config.models if m.card == card_id)
        route = Route(RouteConfig(name=card_id, aliases=[a for a in card.aliases if a not in routes],
                                  deployments=[card_id], retry=RetryPolicy(max_attempts=1),
                                  timeouts=Timeouts(total_s=model_cfg.request_timeout_s + 5)),
                      [deployments[card_id]], implicit=True)
        route_list.append(route)
        for name in [route.name, *route.config.aliases]:
            routes[name] = route
    default = routes.get(config.default_route) if config.default_route else None
    return Runtime(config=config, version=version, routes=routes, route_list=route_list, deployments=deployments,
                   backends=backends, pools=pools, default_route=default, local=list(local.values()))


async def start_backends(runtime: Runtime) -> None:
    """Start backends that are new in this runtime, one after another (loads fight over the same cores)."""
    for backend in list(runtime.backends.values()):
        if not backend.started:
            backend.started = True
            await backend.start()


async def retire(old: Runtime, new: Runtime | None, grace_s: float = 30.0) -> None:
    """Close what the old runtime had and the new one dropped, after in-flight requests had time to finish."""
    keep_b = set(new.backends) if new else set()
    keep_p = set(new.pools) if new else set()
    gone_b = [b for k, b in old.backends.items() if k not in keep_b]
    gone_p = [p for k, p in old.pools.items() if k not in keep_p]
    if not gone_b and not gone_p:
        return
    if new is not None:
        await asyncio.sleep(grace_s)
    await asyncio.gather(*(b.aclose() for b in gone_b), *(p.aclose() for p in gone_p), return_exceptions=True)
