"""README, "When Redis fails": what one gateway does while its Redis cannot be reached, and after.

The gateway talks to the shared test Redis through a proxy the test controls (`tests/tcp_proxy.py`), so
the outage is this gateway's alone: the proxy either refuses connections (Redis died) or swallows them
without a word (Redis hangs; every call then costs the configured timeout). During it:

- keys this replica has seen keep working from its memory; keys it never saw get a 503 (they cannot be
  checked), not a 401;
- rate limits fail open, except that a deployment with `rate_limit_failure: closed` is taken out of the
  plan, and a route left with none is a 503;
- `/ready` stays 200 and reports `"redis": {"state": "degraded", "errors": N}`.

When Redis is back, the unknown key works, a wrong key is a 401 again, and `/ready` says `ok`.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import urlsplit

import httpx
import pytest
import redis as redis_sync

from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401  (fixture)
from tests.server import GatewayProcess
from tests.tcp_proxy import TcpProxy
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-unreachable-test-0"
LIMIT = {"rpm": 100000}  # a limit that is never reached: only its check needs Redis


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def behind_proxy(sims: Sims) -> Iterator[tuple[GatewayProcess, TcpProxy]]:
    url = urlsplit(require_redis())
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 6379).start()
    prefix = unique_prefix()
    sims.reset()
    cfg = {
        "redis": {"url": proxy.url(path=url.path or "/0"), "prefix": prefix, "timeout_s": 0.2, "degraded_for_s": 2.0},
        "usage": {"flush_interval_s": 0.2},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{sims.b.url}/v1"}},
        "deployments": [
            {"name": "open", "provider": "vllm-a", "model": "vllm-model"},  # rate_limit_failure: open (default)
            {"name": "closed", "provider": "vllm-b", "model": "vllm-model", "rate_limit_failure": "closed"},
        ],
        "routes": [
            {"name": "mixed", "deployments": ["closed", "open"], "rate_limit": LIMIT},
            {"name": "closed-only", "deployments": ["closed"], "rate_limit": LIMIT},
            {"name": "open-only", "deployments": ["open"], "rate_limit": LIMIT},
        ],
        "health_checks": {"interval_s": 5},
    }
    try:
        with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
            yield g, proxy
    finally:
        proxy.stop()
        sims.reset()
        client = redis_sync.Redis.from_url(require_redis())
        stale = list(client.scan_iter(f"{prefix}*"))
        if stale:
            client.delete(*stale)
        client.close()


def new_key(g: GatewayProcess) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "outage"}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def chat(g: GatewayProcess, key: str, model: str = "open-only") -> httpx.Response:
    # temperature 1: not cached, so every answer comes from a deployment
    return httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=30,
                      json={"model": model, "temperature": 1, "messages": [{"role": "user", "content": "hi"}]})


def ready(g: GatewayProcess) -> dict[str, Any]:
    r = httpx.get(f"{g.root_url}/ready", headers=auth(MASTER), timeout=10)
    assert r.status_code == 200, f"Redis only degrades the gateway, it never makes it unready: {r.text}"
    return r.json()


def assert_error(r: httpx.Response, status: int, error_type: str, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == (error_type, code), err
    assert set(err) == {"message", "type", "param", "code"}, err


@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_an_unreachable_redis_degrades_the_gateway_and_it_recovers(behind_proxy, sims: Sims, outage: str) -> None:
    g, proxy = behind_proxy
    known, unknown = new_key(g), new_key(g)  # both in Redis; only `known` is ever used before the outage
    assert chat(g, known).status_code == 200
    assert ready(g)["redis"]["state"] == "ok"
    sims.a.clear()
    sims.b.clear()

    proxy.cut() if outage == "refused" else proxy.silence()

    # A key this replica has seen is served from its memory, rate limits failing open ...
    r = chat(g, known)
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "open"
    assert chat(g, MASTER).status_code == 200, "the master key needs no Redis"
    # ... except where a deployment says closed: it leaves the plan, and the route fails over past it ...
    r = chat(g, known, model="mixed")
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "open"
    assert sims.b.count("/v1/chat/completions") == 0, "the fail-closed deployment was asked during the outage"
    # ... or, with nothing left, the request is refused with a 503 (and Retry-After), never served unlimited.
    r = chat(g, known, model="closed-only")
    assert_error(r, 503, "service_unavailable_error", "rate_limiter_unavailable")
    assert int(r.headers["retry-after"]) >= 1
    assert sims.b.count("/v1/chat/completions") == 0
    # A key this replica never saw cannot be checked: a 503 with Retry-After, not a 401 (it may be valid).
    for key in (unknown, "sk-gw-never-issued-" + "x" * 30):
        r = chat(g, key)
        assert_error(r, 503, "service_unavailable_error", "auth_unavailable")
        assert int(r.headers["retry-after"]) >= 1
    status = ready(g)["redis"]
    assert status["state"] == "degraded" and status["errors"] > 0 and status["last_error"], status
    metrics = httpx.get(f"{g.root_url}/metrics", headers=auth(MASTER), timeout=10).text
    errors = [line for line in metrics.splitlines() if line.startswith("llm_gateway_redis_errors_total ")]
    assert errors and float(errors[0].split()[1]) > 0, errors

    proxy.restore()

    # redis-py reconnects by itself: the key it could not check works, a wrong one is a 401 again ...
    wait_until(lambda: chat(g, unknown).status_code == 200, timeout=30, interval=0.2, what="the unknown key served")
    r = chat(g, "sk-gw-never-issued-" + "x" * 30)
    assert_error(r, 401, "invalid_request_error", "invalid_api_key")
    # ... the fail-closed deployment serves again ...
    r = chat(g, known, model="closed-only")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "closed", r.text
    # ... and /ready stops saying degraded once Redis has answered for a while (degraded_for_s without an error).
    back = wait_until(lambda: (s := ready(g)["redis"])["state"] == "ok" and s, timeout=60, interval=0.5,
                      what="/ready reporting redis ok again")
    assert back["errors"] > 0, "the count of errors is kept"

