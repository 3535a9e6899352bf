"""README, "Keys": a virtual key has an expiry; a missing, malformed or wrong key is a 401 `invalid_api_key`,
and expiring one applies at once, in memory and with Redis, and during a Redis outage too (the copy a
replica remembers expires like the record).

Expiries are short (1.5 s) and the tests poll for the 401. A machine too busy to use a key within its
first 1.5 s gets a longer one, so "it worked before it expired" is checked, never assumed.
"""

from __future__ import annotations

import time
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

MASTER = "sk-master-key-expiry-test-00"
EXPIRIES_S = (1.5, 5.0, 15.0)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def config(s: Sims, redis_url: str | None, prefix: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [{"name": "chat", "deployments": ["a"]}],
        "health_checks": {"interval_s": 5},
    }
    if redis_url:
        cfg["redis"] = {"url": redis_url, "prefix": prefix, "timeout_s": 0.2}
    return cfg


def _drop_prefix(prefix: str) -> None:
    client = redis_sync.Redis.from_url(require_redis())
    stale = list(client.scan_iter(f"{prefix}*"))
    if stale:
        client.delete(*stale)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def gw(request: pytest.FixtureRequest, sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    prefix = unique_prefix()
    url = require_redis() if request.param == "redis" else None
    with GatewayProcess(config(sims, url, prefix), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        yield g
    if url:
        _drop_prefix(prefix)


def chat(g: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=30,
                      json={"model": "chat", "messages": [{"role": "user", "content": "still valid?"}]})


def key_used_before_it_expired(g: GatewayProcess) -> dict[str, Any]:
    """A key with a short expiry, and proof that it was served before the expiry."""
    for seconds in EXPIRIES_S:
        started = time.time()
        r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), timeout=10,
                       json={"alias": "short-lived", "expires_in_s": seconds})
        assert r.status_code == 201, r.text
        created = r.json()
        assert started + seconds - 1 <= created["expires_at"] <= time.time() + seconds + 1, created
        answer = chat(g, created["key"])
        if time.time() < created["expires_at"]:  # answered while the key was still valid
            assert answer.status_code == 200, answer.text
            return created
    pytest.fail(f"this machine could not use a key within {EXPIRIES_S[-1]} s of creating it")


def wait_for_expiry(g: GatewayProcess, created: dict[str, Any]) -> httpx.Response:
    r = wait_until(lambda: (a := chat(g, created["key"])).status_code != 200 and a,
                   timeout=created["expires_at"] - time.time() + 30, interval=0.2, what="the key's expiry")
    assert time.time() >= created["expires_at"], "refused before its expiry"
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("invalid_request_error", "invalid_api_key"), err
    assert "expired" in err["message"], err
    return r


def test_a_key_works_until_it_expires_then_gets_a_401(gw: GatewayProcess) -> None:
    forever = httpx.post(f"{gw.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "forever"}, timeout=10)
    created = key_used_before_it_expired(gw)
    wait_for_expiry(gw, created)
    assert chat(gw, forever.json()["key"]).status_code == 200, "a key without an expiry is unaffected"
    listed = httpx.get(f"{gw.root_url}/admin/keys/{created['id']}", headers=auth(MASTER), timeout=10).json()
    assert listed["expires_at"] == created["expires_at"] and listed["revoked"] is False


def test_a_remembered_key_expires_during_a_redis_outage(sims: Sims) -> None:
    sims.reset()
    url = urlsplit(require_redis())
    prefix = unique_prefix()
    with TcpProxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        try:
            cfg = config(sims, proxy.url(path=url.path or "/0"), prefix)
            with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
                created = key_used_before_it_expired(g)  # now remembered by this replica
                proxy.cut()
                wait_for_expiry(g, created)
        finally:
            _drop_prefix(prefix)
