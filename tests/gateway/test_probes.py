"""What `/ready` and `/health` decide (gateway/probes.py), on a runtime of stand-in backends.

The processes behind them are tested for real in test_readiness.py; here every combination of required
and optional models, routes with and without upstreams, opt-ins and a failed model's clock."""

from __future__ import annotations

from typing import Any

import pytest

from backends.base import Backend, BackendStatus
from gateway.probes import Liveness, assess_readiness
from routing.breaker import CircuitBreaker
from routing.config import DeploymentConfig, GatewayConfig, RouteConfig
from routing.deployment import Deployment
from routing.runtime import Route, Runtime

pytestmark = pytest.mark.unit

REDIS_OK = {"state": "ok", "errors": 0}


class Stub(Backend):
    kind = "stub"

    def __init__(self, name: str, state: str = "ready", required: bool = True) -> None:
        super().__init__(name, None, required=required)
        self.state = state

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def chat(self, *a: Any) -> Any: ...
    async def chat_stream(self, *a: Any) -> Any: ...
    async def completion(self, *a: Any) -> Any: ...
    async def completion_stream(self, *a: Any) -> Any: ...

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, self.kind, self.state, self.required)  # type: ignore[arg-type]


def runtime(local: list[Stub], remote: list[Stub], routes: list[dict[str, Any]]) -> Runtime:
    config = GatewayConfig.model_validate({"models": []})
    deps = {}
    for b in local + remote:
        provider = "local" if b in local else "p"
        deps[b.name] = Deployment(DeploymentConfig(name=b.name, provider=provider, model="m"), b,
                                  CircuitBreaker(config.breaker))
    route_list = [Route(RouteConfig(**r), [deps[n] for n in r["deployments"]]) for r in routes]
    return Runtime(config=config, version=3, routes={r.name: r for r in route_list}, route_list=route_list,
                   deployments=deps, backends={b.name: b for b in local + remote}, pools={}, local=list(local))


def test_an_upstream_outage_degrades_but_never_unreadies() -> None:
    gpt, vllm = Stub("gpt"), Stub("vllm")
    rt = runtime([], [gpt, vllm], [{"name": "chat", "deployments": ["gpt"]},
                                   {"name": "both", "deployments": ["gpt", "vllm"]},
                                   {"name": "kind", "deployments": ["gpt"], "last_resort": {}}])
    report = assess_readiness(rt, REDIS_OK)
    assert (report.status, report.not_ready, report.degraded) == ("ready", [], [])
    rt.deployments["gpt"].healthy = False  # as the health checks mark it
    report = assess_readiness(rt, REDIS_OK)
    assert report.status == "degraded" and report.not_ready == []
    assert report.degraded == ["route:chat", "route:kind"], "a last resort answers, but only with its message"
    assert report.detail["routes"] == {"chat": {"usable_deployments": 0, "deployments": 1},
                                       "both": {"usable_deployments": 1, "deployments": 2},
                                       "kind": {"usable_deployments": 0, "deployments": 1}}
    assert report.detail["deployments"]["gpt"] == {"kind": "stub", "healthy": False, "breaker": "closed"}
    body = report.body()
    assert body["status"] == "degraded" and body["degraded"] == report.degraded and body["config_version"] == 3


def test_a_route_that_requires_its_upstreams_unreadies_the_pod() -> None:
    gpt, vllm = Stub("gpt"), Stub("vllm", state="loading")  # a backend that is not ready is not usable either
    rt = runtime([], [gpt, vllm], [{"name": "strict", "deployments": ["gpt", "vllm"], "ready_requires_upstreams": True},
                                   {"name": "lax", "deployments": ["vllm"]}])
    report = assess_readiness(rt, REDIS_OK)
    assert report.status == "degraded" and report.degraded == ["route:lax"]
    assert report.detail["routes"]["strict"] == {"usable_deployments": 1, "deployments": 2,
                                                 "ready_requires_upstreams": True}
    rt.deployments["gpt"].healthy = False
    report = assess_readiness(rt, REDIS_OK)
    assert report.status == "not_ready" and report.not_ready == ["route:strict"] and report.degraded == ["route:lax"]


def test_required_local_models_decide_readiness() -> None:
    chat, embed, gpt = Stub("chat", state="loading"), Stub("embed", state="failed", required=False), Stub("gpt")
    rt = runtime([chat, embed], [gpt], [{"name": "fallback", "deployments": ["chat", "gpt"]},
                                        {"name": "emb", "deployments": ["embed"]}])
    report = assess_readiness(rt, REDIS_OK)
    assert report.not_ready == ["chat"], "an optional model never makes the pod unready"
    assert report.degraded == ["route:emb"]
    assert report.detail["backends"]["embed"] == {"kind": "stub", "state": "failed", "required": False}
    chat.state = "ready"
    assert assess_readiness(rt, REDIS_OK).status == "degraded"
    embed.state = "ready"
    assert assess_readiness(rt, REDIS_OK).status == "ready"
    for state in ("restarting", "failed"):
        chat.state = state
        assert assess_readiness(rt, REDIS_OK).not_ready == ["chat"], state


def test_redis_degrades_without_unreadying() -> None:
    rt = runtime([], [Stub("gpt")], [{"name": "chat", "deployments": ["gpt"]}])
    down = {"state": "degraded", "errors": 4, "last_error": "ConnectionError"}
    report = assess_readiness(rt, down)
    assert (report.status, report.degraded, report.detail["redis"]) == ("degraded", ["redis"], down)
    assert assess_readiness(rt, {"state": "disabled"}).status == "ready"


def test_the_cache_redis_is_shown_and_degrades_without_unreadying() -> None:
    rt = runtime([], [Stub("gpt")], [{"name": "chat", "deployments": ["gpt"]}])
    down = {"state": "degraded", "errors": 2, "last_error": "ConnectionError"}
    report = assess_readiness(rt, REDIS_OK, down)
    assert (report.status, report.not_ready, report.degraded) == ("degraded", [], ["cache_redis"])
    assert report.body()["redis"] == REDIS_OK and report.body()["cache_redis"] == down
    both = assess_readiness(rt, down, down)
    assert (both.status, both.degraded) == ("degraded", ["redis", "cache_redis"])
    fine = assess_readiness(rt, REDIS_OK, {"state": "ok", "errors": 0})
    assert fine.status == "ready" and fine.body()["cache_redis"]["state"] == "ok"
    assert "cache_redis" not in assess_readiness(rt, REDIS_OK).body(), "no cache_url: the cache shares redis"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failed_model_fails_liveness_after_its_grace() -> None:
    clock = Clock()
    live = Liveness(clock)
    chat, embed = Stub("chat", state="loading"), Stub("embed", state="failed", required=False)
    assert live.observe([chat, embed], 60).failed_for_s == {}, "optional models never count"
    chat.state = "failed"
    first = live.observe([chat, embed], 60)
    assert first.failed_for_s == {"chat": 0.0} and first.failing == []
    clock.now += 59.5
    assert live.observe([chat, embed], 60).failing == []
    clock.now += 0.5
    report = live.observe([chat, embed], 60)
    assert report.failing == ["chat"] and report.failed_for_s == {"chat": 60.0}
    assert live.observe([chat], None).failing == [], "null: /health never fails for a model"
    assert live.observe([chat], 0).failing == ["chat"]


def test_the_clock_restarts_when_a_model_leaves_failed_or_is_replaced() -> None:
    clock = Clock()
    live = Liveness(clock)
    chat = Stub("chat", state="failed")
    live.observe([chat], 10)
    clock.now += 30
    assert live.observe([chat], 10).failing == ["chat"]
    chat.state = "restarting"  # a supervisor that still tries is left to it
    assert live.observe([chat], 10).failed_for_s == {}
    chat.state = "failed"
    assert live.observe([chat], 10).failed_for_s == {"chat": 0.0}, "counted afresh"
    clock.now += 30
    reloaded = Stub("chat", state="failed")  # a reload built a new backend for the model (a fixed model_path)
    assert live.observe([reloaded], 10).failed_for_s == {"chat": 0.0}
