"""README, "Rate limits": RPM and TPM per route (`rate_limit: {rpm, tpm}`), with Redis or in the process.

A route's limit is the route's, whoever calls: past its RPM every key, the master key included, gets a 429
`rate_limit_exceeded` with `Retry-After` and OpenAI's `x-ratelimit-*` headers, and nothing reaches the
upstream. Other routes, limited or not, on the same deployment, are not affected.
"""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest
import redis as redis_sync

from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401  (fixture)
from tests.server import GatewayProcess

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-route-limits-0000"
MSGS = [{"role": "user", "content": "limits"}]
RPM = 2  # one request back every 30 s: nothing refills while a test runs


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    cfg: dict[str, Any] = {
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [
            {"name": "limited", "deployments": ["a"], "rate_limit": {"rpm": RPM}},
            {"name": "neighbour", "deployments": ["a"], "rate_limit": {"rpm": RPM}},
            {"name": "free", "deployments": ["a"]},
            {"name": "tokens", "deployments": ["a"], "rate_limit": {"tpm": 1000}},
        ],
        "health_checks": {"interval_s": 5},
    }
    prefix = unique_prefix()
    if request.param == "redis":
        cfg["redis"] = {"url": require_redis(), "prefix": prefix}
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        yield g
    sims.reset()
    if request.param == "redis":  # only this test's keys
        client = redis_sync.Redis.from_url(require_redis())
        stale = list(client.scan_iter(f"{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()


def new_key(g: GatewayProcess) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "tenant"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def chat(g: GatewayProcess, key: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=30,
                      json={"model": model, "messages": MSGS, **extra})


def assert_rate_limited(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded"), err
    return err


def test_past_the_routes_rpm_every_caller_is_refused_and_other_routes_serve(gw: GatewayProcess, sims: Sims) -> None:
    k1, k2 = new_key(gw), new_key(gw)
    served = [chat(gw, k1, "limited"), chat(gw, k2, "limited")]  # two tenants share the route's 2 per minute
    for r, remaining in zip(served, ("1", "0")):
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert r.headers["x-ratelimit-remaining-requests"] == remaining
        assert "x-ratelimit-reset-requests" in r.headers
    for key in (k1, k2, MASTER):  # any key: the limit is the route's, not the caller's
        r = chat(gw, key, "limited")
        assert_rate_limited(r)
        assert 1 <= int(r.headers["retry-after"]) <= 60 // RPM, r.headers
        assert 0 < int(r.headers["retry-after-ms"]) <= 60_000 // RPM
        assert r.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert sims.a.count("/v1/chat/completions") == 2, "a refused request never reaches the upstream"

    for _ in range(RPM + 1):  # the same deployment, through a route without limits: no limit, no headers
        r = chat(gw, k1, "free")
        assert r.status_code == 200 and not any(h.startswith("x-ratelimit-") for h in r.headers), r.headers
    neighbour = [chat(gw, k1, "neighbour") for _ in range(RPM)]  # a limited route has its own budget
    assert [r.status_code for r in neighbour] == [200] * RPM
    assert [r.headers["x-ratelimit-remaining-requests"] for r in neighbour] == ["1", "0"]
    assert_rate_limited(chat(gw, k1, "neighbour"))

    metrics = httpx.get(f"{gw.root_url}/metrics", headers=auth(MASTER), timeout=10).text
    counted = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in metrics.splitlines() if line.startswith("llm_gateway_rate_limited_total{")}
    assert counted == {'reason="rate_limit_exceeded",route="limited"': 3.0,
                       'reason="rate_limit_exceeded",route="neighbour"': 1.0}, counted


def test_a_routes_tpm_is_reported_and_a_request_that_can_never_fit_is_refused(gw: GatewayProcess,
                                                                              sims: Sims) -> None:
    key = new_key(gw)
    ok = chat(gw, key, "tokens", max_tokens=100)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-ratelimit-limit-tokens"] == "1000"
    assert 0 < int(ok.headers["x-ratelimit-remaining-tokens"]) <= 900  # the prompt and max_tokens reserved
    assert "x-ratelimit-limit-requests" not in ok.headers, "only the limits that apply"
    never = chat(gw, MASTER, "tokens", max_tokens=5000)  # more than a whole minute's tokens
    assert_rate_limited(never)
    assert never.headers["x-should-retry"] == "false" and never.headers["x-ratelimit-limit-tokens"] == "1000"
    assert sims.a.count("/v1/chat/completions") == 1
