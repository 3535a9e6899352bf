"""A gateway in front of simulated upstreams: two vLLM replicas, OpenAI and Anthropic."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
import pytest

from tests.server import GatewayProcess
from tests.sim import AnthropicSim, OpenAISim, VLLMSim

ADMIN_KEY = "admin-test-key"
OPENAI_KEY = "sk-upstream-openai-test"
ANTHROPIC_KEY = "sk-ant-upstream-test"


@dataclass
class Sims:
    a: VLLMSim
    b: VLLMSim
    gpt: OpenAISim
    claude: AnthropicSim

    def all(self) -> list:
        return [self.a, self.b, self.gpt, self.claude]

    def reset(self) -> None:
        for s in self.all():
            if not s.is_running:
                s.start()
            s.clear_faults()
            s.clear()
        for v in (self.a, self.b):
            v.healthy, v.waiting, v.kv_cache_usage, v.refuse_prefill = True, 0, 0.0, False
        for o in (self.a, self.b, self.gpt):
            o.context_window, o.reply_override = None, None


def base_config(s: Sims) -> dict[str, Any]:
    fast = {"connect_s": 1.0, "read_s": 1.0, "total_s": 10.0}
    retry = {"max_attempts": 3, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "retry_after_cap_s": 1.0}
    return {
        "server": {"watch_interval_s": 0.2},
        "models": [],
        "providers": {
            "vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"},
            "vllm-b": {"kind": "vllm", "base_url": f"{s.b.url}/v1"},
            "openai": {"kind": "openai", "base_url": f"{s.gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"},
            "claude": {"kind": "anthropic", "base_url": s.claude.url, "api_key": "${SIM_ANTHROPIC_KEY}"},
            "nowhere": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "connect_timeout_s": 0.5},
        },
        "deployments": [
            {"name": "a", "provider": "vllm-a", "model": "vllm-model", "card": "qwen2.5-7b-instruct-awq"},
            {"name": "b", "provider": "vllm-b", "model": "vllm-model", "card": "qwen2.5-7b-instruct-awq"},
            {"name": "a-heavy", "provider": "vllm-a", "model": "vllm-model", "weight": 3},
            {"name": "b-light", "provider": "vllm-b", "model": "vllm-model", "weight": 1},
            {"name": "gpt", "provider": "openai", "model": "sim-model", "card": "gpt-4o-mini"},
            {"name": "claude", "provider": "claude", "model": "claude-haiku-4-5", "card": "claude-haiku-4-5"},
            {"name": "dead", "provider": "nowhere", "model": "x"},
        ],
        "routes": [
            {"name": "chat-default", "deployments": ["a", "b"], "timeouts": fast, "retry": retry},
            {"name": "no-continue", "deployments": ["a", "b"], "timeouts": fast, "retry": retry,
             "stream_continuation": False},
            {"name": "weighted", "deployments": ["a-heavy", "b-light"], "strategy": "weighted", "timeouts": fast},
            {"name": "least-busy", "deployments": ["a", "b"], "strategy": "least-busy", "timeouts": fast},
            {"name": "claude", "deployments": ["claude"], "timeouts": fast},
            {"name": "gpt-first", "deployments": ["gpt", "a"], "timeouts": fast, "retry": retry},
            {"name": "tiered", "deployments": ["a"], "timeouts": fast, "rules": [
                {"when": {"header": {"x-tier": "gold"}}, "deployments": ["b"]},
                {"when": {"metadata": {"team": "research"}}, "route": "claude"},
                {"when": {"min_prompt_tokens": 500}, "deployments": ["gpt"]},
            ]},
            {"name": "degraded", "deployments": ["dead"], "timeouts": fast,
             "retry": {"max_attempts": 2, "backoff_base_s": 0.01},
             "last_resort": {"message": "We are degraded right now."}},
        ],
        "breaker": {"failure_threshold": 3, "cooldown_s": 1.0, "min_requests": 50},
        "health_checks": {"interval_s": 0.2, "timeout_s": 0.5},
    }


def start_gateway(s: Sims, config: dict[str, Any] | None = None, require_ready: bool = False) -> GatewayProcess:
    """require_ready=False: return once the server answers (/ready 503 too: a required model still loading)."""
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    return GatewayProcess(config or base_config(s), env=env, require_ready=require_ready, ready_timeout=120)


def admin(gw: GatewayProcess, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{gw.root_url}/admin{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                         timeout=10)


def with_changes(config: dict[str, Any], **routes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for r in out["routes"]:
        if r["name"] in routes:
            r.update(routes[r["name"]])
    return out


@pytest.fixture(scope="session")
def sims() -> Iterator[Sims]:
    s = Sims(VLLMSim("vllm-a").start(), VLLMSim("vllm-b").start(), OpenAISim("gpt", api_key=OPENAI_KEY).start(),
             AnthropicSim("claude", api_key=ANTHROPIC_KEY).start())
    yield s
    for sim in s.all():
        sim.stop()


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    with start_gateway(sims) as g:
        yield g
    sims.reset()
