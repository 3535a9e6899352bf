"""Azure OpenAI through the gateway, driven by the official OpenAI SDK, on the Azure simulator; and deployment
rpm caps that two gateway replicas share through Redis, so that Azure never answers one of them 429.

Two replicas (one Redis, one key prefix) serve every test; each test uses deployments of its own, so the
minute one test spends is not another's.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import openai
import pytest
import redis as redis_sync

from tests.redis_env import require_redis, unique_prefix
from tests.server import GatewayProcess
from tests.sim import AzureSim, canonical_reply
from tests.sim.azure_sim import FILTER_WORD

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

KEY = "azure-upstream-key-0123456789"
HEADER_SECRET = "custom-auth-secret-9876543210"
ADMIN = "admin-azure-test-key"
MSGS = [{"role": "user", "content": "Hello Azure"}]


def gateway_config(sim: AzureSim, prefix: str) -> dict[str, Any]:
    fast = {"connect_s": 1.0, "read_s": 5.0, "total_s": 10.0}
    retry = {"max_attempts": 3, "backoff_base_s": 0.01}
    return {
        "redis": {"url": require_redis(), "prefix": prefix},
        "models": [],
        "providers": {
            "azure": {"kind": "azure", "base_url": sim.url, "api_key": "${SIM_AZURE_KEY}",
                      "headers": {"OpenAI-Organization": "org-gateway", "X-Custom-Auth": "${SIM_HEADER_SECRET}"}},
            "azure-v1": {"kind": "azure", "base_url": sim.url, "api_key": "${SIM_AZURE_KEY}", "api_version": "v1"},
        },
        "deployments": [
            {"name": "az", "provider": "azure", "model": "gpt-4o", "headers": {"X-Deployment": "az"}},
            {"name": "az-v1", "provider": "azure-v1", "model": "gpt-4o"},
            {"name": "az-embed", "provider": "azure", "model": "embed"},
            {"name": "az-quota", "provider": "azure", "model": "quota-3", "rpm": 3},
            {"name": "az-spare", "provider": "azure", "model": "gpt-4o"},
            {"name": "az-solo", "provider": "azure", "model": "quota-1", "rpm": 1},
        ],
        "routes": [
            {"name": "chat", "deployments": ["az"], "timeouts": fast, "retry": retry},
            {"name": "chat-v1", "deployments": ["az-v1"], "timeouts": fast},
            {"name": "embed", "deployments": ["az-embed"]},
            {"name": "capped", "deployments": ["az-quota", "az-spare"], "timeouts": fast, "retry": retry},
            {"name": "solo", "deployments": ["az-solo"], "timeouts": fast, "retry": retry},
        ],
        "health_checks": {"interval_s": 5},
    }


@pytest.fixture(scope="module")
def sim() -> Iterator[AzureSim]:
    with AzureSim(api_key=KEY, deployments=("gpt-4o", "embed", "quota-3", "quota-1")) as s:
        yield s


@pytest.fixture(scope="module")
def pair(sim: AzureSim) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    prefix = unique_prefix()
    cfg = gateway_config(sim, prefix)
    env = {"SIM_AZURE_KEY": KEY, "SIM_HEADER_SECRET": HEADER_SECRET, "LLM_GATEWAY_ADMIN_KEY": ADMIN}
    with GatewayProcess(cfg, env=env) as a, GatewayProcess(cfg, env=env) as b:
        yield a, b
    client = redis_sync.Redis.from_url(require_redis())
    stale = list(client.scan_iter(f"{prefix}*"))
    if stale:
        client.delete(*stale)
    client.close()


@pytest.fixture
def gw(pair: tuple[GatewayProcess, GatewayProcess], sim: AzureSim) -> GatewayProcess:
    sim.reset()
    return pair[0]


def sdk(g: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=30)


def model_requests(sim: AzureSim, deployment: str | None = None) -> list[Any]:
    return [r for r in sim.requests if r.path.startswith("/openai/")
            and (deployment is None or f"/deployments/{deployment}/" in r.path)]


def test_chat_goes_to_the_deployment_s_url_with_the_key_and_the_headers(gw: GatewayProcess, sim: AzureSim) -> None:
    r = sdk(gw).chat.completions.with_raw_response.create(model="chat", messages=MSGS, max_tokens=50)
    assert r.parse().choices[0].message.content == canonical_reply(MSGS)
    assert r.headers["x-gateway-deployment"] == "az"
    sent = model_requests(sim)[-1]
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert (sent.headers["openai-organization"], sent.headers["x-custom-auth"], sent.headers["x-deployment"]) == \
        ("org-gateway", HEADER_SECRET, "az")
    assert HEADER_SECRET not in gw.logs(None) and KEY not in gw.logs(None)


def test_a_stream_is_openai_s_shape_and_the_v1_api_works(gw: GatewayProcess, sim: AzureSim) -> None:
    chunks = list(sdk(gw).chat.completions.create(model="chat", messages=MSGS, stream=True,
                                                  stream_options={"include_usage": True}))
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == canonical_reply(MSGS)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    v1 = sdk(gw).chat.completions.create(model="chat-v1", messages=MSGS)
    assert v1.choices[0].message.content == canonical_reply(MSGS)
    sent = model_requests(sim)[-1]
    assert sent.path == "/openai/v1/chat/completions" and sent.body["model"] == "gpt-4o"


def test_embeddings(gw: GatewayProcess, sim: AzureSim) -> None:
    out = sdk(gw).embeddings.create(model="embed", input=["one", "two"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == sim.embedding_dimensions
    assert model_requests(sim)[-1].path == "/openai/deployments/embed/embeddings"


def test_a_filtered_prompt_is_a_400_content_filter_and_not_retried(gw: GatewayProcess, sim: AzureSim) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gw).chat.completions.create(model="chat", messages=[{"role": "user", "content": FILTER_WORD}])
    assert err.value.code == "content_filter" and err.value.status_code == 400
    assert len(model_requests(sim)) == 1


def test_the_admin_config_masks_header_values_but_references(gw: GatewayProcess) -> None:
    shown = httpx.get(f"{gw.root_url}/admin/config", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert shown.status_code == 200, shown.text
    cfg = shown.json()["config"]
    assert cfg["providers"]["azure"]["headers"] == {"OpenAI-Organization": "***",
                                                    "X-Custom-Auth": "${SIM_HEADER_SECRET}"}
    assert cfg["deployments"][0]["headers"] == {"X-Deployment": "***"}
    assert HEADER_SECRET not in shown.text and KEY not in shown.text


def test_two_replicas_fail_over_at_the_deployment_s_rpm_and_azure_never_says_429(
        pair: tuple[GatewayProcess, GatewayProcess], sim: AzureSim) -> None:
    """az-quota's Azure deployment has a quota of 3 a minute, and so has its gateway deployment: six requests,
    alternating between the replicas, send 3 there and fail the others over to az-spare before Azure is asked."""
    sim.reset()
    sim.rpm["quota-3"] = 3
    served = []
    for i in range(6):
        r = sdk(pair[i % 2]).chat.completions.with_raw_response.create(model="capped", messages=MSGS)
        assert r.parse().choices[0].message.content == canonical_reply(MSGS)
        served.append(r.headers["x-gateway-deployment"])
    assert served == ["az-quota"] * 3 + ["az-spare"] * 3
    assert sim.throttled == 0 and len(model_requests(sim, "quota-3")) == 3


def test_at_every_deployment_s_cap_the_client_gets_429_with_retry_after(
        pair: tuple[GatewayProcess, GatewayProcess], sim: AzureSim) -> None:
    sim.reset()
    sim.rpm["quota-1"] = 1
    sdk(pair[0]).chat.completions.create(model="solo", messages=MSGS)
    with pytest.raises(openai.RateLimitError) as err:
        sdk(pair[1]).chat.completions.create(model="solo", messages=MSGS)
    assert err.value.code == "rate_limit_exceeded"
    retry = int(err.value.response.headers["retry-after"])
    assert 55 <= retry <= 60 and float(err.value.response.headers["retry-after-ms"]) / 1000 <= retry
    assert sim.throttled == 0 and len(model_requests(sim, "quota-1")) == 1
