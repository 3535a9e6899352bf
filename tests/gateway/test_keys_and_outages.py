"""Keys, budgets and the cache when Redis misbehaves or records are odd, and what one tenant can learn.

A real gateway on a private Redis that the tests stop and restart: a key revoked before an outage stays
revoked through it; spend during an outage reaches the budget once Redis is back; a record with an
unknown field works and a corrupt one is a miss, never a 500; each key has its own cache entries; a
client cannot make entries live for years.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import httpx
import pytest
import redis as redis_sync

from tests.redis_env import ThrowawayRedis, require_redis, unique_prefix
from tests.routing_env import OPENAI_KEY, Sims, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.waiting import wait_until_async

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-outage-test-000"
MSGS = [{"role": "user", "content": "hello"}]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def store() -> Iterator[ThrowawayRedis]:
    r = ThrowawayRedis().start()
    yield r
    r.stop()


@pytest.fixture
def gw(sims: Sims, store: ThrowawayRedis) -> Iterator[tuple[GatewayProcess, str]]:
    sims.reset()
    prefix = unique_prefix()
    cfg = {"redis": {"url": store.url, "prefix": prefix, "timeout_s": 0.2},
           "usage": {"flush_interval_s": 0.2},
           "providers": {"gpt": {"kind": "openai", "base_url": f"{sims.gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"}},
           "deployments": [{"name": "gpt", "provider": "gpt", "model": "sim-model", "card": "gpt-4o-mini"}],
           "routes": [{"name": "chat", "deployments": ["gpt"]},
                      {"name": "shared", "deployments": ["gpt"], "cache": {"scope": "shared"}}],
           "health_checks": {"interval_s": 5}}
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY}
    with GatewayProcess(cfg, env=env) as g:
        yield g, prefix
    sims.reset()


def new_key(g: GatewayProcess, **fields: Any) -> dict[str, Any]:
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "t", **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def chat(g: GatewayProcess, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=10,
                      json={"model": "chat", "messages": MSGS, **body})


def test_a_key_revoked_before_an_outage_stays_revoked_through_it(gw: tuple[GatewayProcess, str],
                                                                 store: ThrowawayRedis) -> None:
    g, _ = gw
    key = new_key(g)
    assert chat(g, key["key"]).status_code == 200  # this replica now remembers the key
    assert httpx.delete(f"{g.root_url}/admin/keys/{key['id']}", headers=auth(MASTER)).status_code == 200
    store.stop()
    r = chat(g, key["key"])
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"], r.text


def test_spend_during_an_outage_reaches_the_budget_when_redis_is_back(gw: tuple[GatewayProcess, str],
                                                                      store: ThrowawayRedis) -> None:
    g, prefix = gw
    key = new_key(g, budget_usd=1000, budget_period="total")
    assert chat(g, key["key"]).status_code == 200
    store.stop()
    for _ in range(5):  # served from the remembered key, budget fails open
        assert chat(g, key["key"]).status_code == 200
    store.start()
    client = redis_sync.Redis.from_url(store.url)
    deadline = time.monotonic() + 10
    spent = 0.0
    while time.monotonic() < deadline:
        raw = client.get(f"{prefix}spend:{key['id']}:total")
        spent = float(raw) if raw else 0.0
        if spent > 0 and _requests(client, prefix, key["id"]) >= 5:
            break
        time.sleep(0.1)
    one = _cost_of_one(g)
    # The restarted Redis is empty (it keeps nothing on disk): what it holds now is exactly the spend of the
    # 5 answers given while it was down, written by the flushes that followed.
    assert spent == pytest.approx(5 * one, rel=1e-6), (spent, one)


def _requests(client: redis_sync.Redis, prefix: str, key_id: str) -> int:
    total = 0
    for name in client.scan_iter(f"{prefix}usage:*:{key_id}:*"):
        total += int(client.hget(name, "requests") or 0)
    return total


def _cost_of_one(g: GatewayProcess) -> float:
    """The card price of one simulated answer (the sim reports the same usage for the same prompt)."""
    r = httpx.post(f"{g.base_url}/chat/completions", headers=auth(MASTER), timeout=10,
                   json={"model": "chat", "messages": MSGS, "temperature": 0, "seed": 1})
    usage = r.json()["usage"]
    from backends.model_cards import load_cards

    price = load_cards()["gpt-4o-mini"].pricing
    return (price.input_per_mtok * usage["prompt_tokens"] + price.output_per_mtok * usage["completion_tokens"]) / 1e6


def test_odd_key_records_never_give_a_500(gw: tuple[GatewayProcess, str], store: ThrowawayRedis) -> None:
    import hashlib
    import json

    g, prefix = gw
    client = redis_sync.Redis.from_url(store.url)
    newer, broken = new_key(g, alias="newer"), new_key(g, alias="broken")
    rec_key = f"{prefix}key:{hashlib.sha256(newer['key'].encode()).hexdigest()}"
    record = json.loads(client.get(rec_key))
    client.set(rec_key, json.dumps({**record, "added_by_a_newer_version": {"x": 1}}))  # a rolling upgrade
    client.set(f"{prefix}key:{hashlib.sha256(broken['key'].encode()).hexdigest()}", b"{not json")
    assert chat(g, newer["key"]).status_code == 200
    r = chat(g, broken["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    listing = httpx.get(f"{g.root_url}/admin/keys", headers=auth(MASTER), timeout=10)
    assert listing.status_code == 200 and {k["alias"] for k in listing.json()["data"]} >= {"newer"}
    assert httpx.get(f"{g.root_url}/admin/keys/{broken['id']}", headers=auth(MASTER)).status_code == 404


def test_admin_key_fields_edge_cases(gw: tuple[GatewayProcess, str]) -> None:
    g, _ = gw
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "x", "expires_in_s": None})
    assert r.status_code == 201 and r.json()["expires_at"] is None, r.text
    secret = "legacy-" + "Q" * 30 + "wxyz"
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "imported", "key": secret})
    assert r.status_code == 201
    listed = httpx.get(f"{g.root_url}/admin/keys", headers=auth(MASTER)).text
    assert "legacy-QQQ" not in listed and "…wxyz" in listed, "only the last 4 characters are kept"
    minted = new_key(g)
    assert minted["display"] == "sk-gw-…" + minted["key"][-4:]


def test_each_key_has_its_own_cache_entries_unless_shared(gw: tuple[GatewayProcess, str]) -> None:
    g, _ = gw
    a, b = new_key(g)["key"], new_key(g)["key"]
    body = {"temperature": 0, "messages": [{"role": "user", "content": "a private question"}]}
    assert chat(g, a, **body).headers["x-gateway-cache"] == "miss"
    assert chat(g, a, **body).headers["x-gateway-cache"] == "hit"
    assert chat(g, b, **body).headers["x-gateway-cache"] == "miss", "b learnt that a asked this"
    shared = {**body, "model": "shared"}
    assert chat(g, a, **shared).headers["x-gateway-cache"] == "miss"
    assert chat(g, b, **shared).headers["x-gateway-cache"] == "hit", "scope: shared is one set of entries"


def test_a_client_cannot_make_cache_entries_live_for_years(gw: tuple[GatewayProcess, str],
                                                           store: ThrowawayRedis) -> None:
    g, prefix = gw
    client = redis_sync.Redis.from_url(store.url)
    for i, ttl in enumerate(("1e12", "1e300")):
        r = httpx.post(f"{g.base_url}/chat/completions", timeout=10,
                       headers={**auth(MASTER), "x-gateway-cache-ttl": ttl},
                       json={"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": f"ttl {i}"}]})
        assert r.status_code == 200, r.text
    ttls = [client.pttl(k) / 1000 for k in client.scan_iter(f"{prefix}cache:*")]
    assert ttls and max(ttls) <= 86400 + 86400 + 1, ttls  # the route's max_client_ttl_s plus its stale grace
    ready = httpx.get(f"{g.root_url}/ready", headers=auth(MASTER)).json()
    assert ready["redis"]["state"] == "ok", ready["redis"]


def test_an_abandoned_settlement_still_corrects_the_reservation_and_counts_the_spend() -> None:
    """A client that leaves a stream cancels its request while the spend is being written; the settlement
    runs on, so the TPM reservation is corrected and the spend counted."""
    import redis.asyncio as aioredis

    from gateway.accounting import Reservation, settle
    from gateway.auth import Principal
    from gateway.keys import KeyRecord
    from gateway.ratelimit import LimitSpec, RedisRateLimiter
    from gateway.redis_conn import RedisLink
    from gateway.usage import usage_store

    url = require_redis()
    prefix = unique_prefix()

    class Dep:
        name = "d"

        def cost_usd(self, p: int, c: int) -> float:
            return 0.5

    async def scenario() -> tuple[dict, float]:
        client = aioredis.Redis.from_url(url)
        limiter = RedisRateLimiter(client, prefix)
        store = usage_store(client, prefix)
        link = RedisLink(None, 0.2, prefix)
        principal = Principal(key=KeyRecord(id="k1", alias="a", budget_usd=10, budget_period="total"))
        reservation = Reservation([("key:k1", LimitSpec(None, 1000))], tokens=600)
        task = asyncio.ensure_future(settle(usage={"prompt_tokens": 10, "completion_tokens": 5}, fallback_completion=0,
                                            prompt_estimate=0, reservation=reservation, principal=principal,
                                            route="r", deployment=Dep(), limiter=limiter, store=store, link=link))
        await asyncio.sleep(0)  # settling has begun ...
        task.cancel()  # ... when the client leaves
        with pytest.raises(asyncio.CancelledError):
            await task
        async def settled() -> bool:  # the settlement runs on by itself; a busy machine may take a while
            return "key:k1" in limiter._pending and await store.spend("k1", "total") > 0

        await wait_until_async(settled, timeout=30, what="the abandoned settlement")
        pending = dict(limiter._pending)
        spent = await store.spend("k1", "total")
        await client.aclose()
        return pending, spent

    pending, spent = asyncio.run(scenario())
    assert pending["key:k1"][1] == 15 - 600, "the reservation was corrected to the real usage"
    assert spent == pytest.approx(0.5), "the spend was counted"
