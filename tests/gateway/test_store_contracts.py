"""One contract per store, held against both of its implementations (Redis, and this process).

The key store, rate limiter, response cache and usage store each have a Redis class and an in-process
twin, chosen once by a factory. Every behaviour check here runs against both, so the twin cannot drift
from the store the replicas share. Redis is the one at $REDIS_URL (a unique key prefix per test; only that
prefix's keys are removed afterwards). Without it these tests fail: a twin checked against nothing proves
nothing. The few checks at the end cover what only Redis has (outages, reads along with a key).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.cache import MemoryResponseCache, RedisResponseCache, ResponseCache, response_cache
from gateway.keys import KEY_PREFIX, MISSING, KeyExists, KeyStore, MemoryKeyStore, RedisKeyStore, key_store
from gateway.ratelimit import LimitResult, LimitSpec, MemoryRateLimiter, RateLimiter, RedisRateLimiter, rate_limiter
from gateway.store_errors import StoreUnavailable
from gateway.usage import MemoryUsageStore, RedisUsageStore, UsageStore, period_id, split_tiers, usage_store
from tests.redis_env import fresh_redis, unique_prefix

Backend = tuple["aioredis.Redis | None", str]  # what every factory takes: a client (None: in-process), a prefix


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        yield None, "gw:"
        return
    async with fresh_redis() as live:
        yield live


@pytest.fixture
async def redis_only() -> AsyncIterator[Backend]:
    async with fresh_redis() as live:
        yield live


@asynccontextmanager
async def _dead_redis() -> AsyncIterator[aioredis.Redis]:
    """A client of a port nobody listens on: every call fails at once."""
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    try:
        yield dead
    finally:
        await dead.aclose()


@pytest.fixture
def keys(backend: Backend) -> KeyStore:
    return key_store(*backend)


@pytest.fixture
def limiter(backend: Backend) -> RateLimiter:
    return rate_limiter(*backend, timeout_s=2.0)


@pytest.fixture
def cache(backend: Backend) -> ResponseCache:
    return response_cache(*backend, max_entries=100, timeout_s=2.0)


@pytest.fixture
def usage(backend: Backend) -> UsageStore:
    return usage_store(*backend)


def test_each_factory_picks_its_store_once(backend: Backend) -> None:
    client, prefix = backend
    built = [key_store(client, prefix), rate_limiter(client, prefix), response_cache(client, prefix),
             usage_store(client, prefix)]
    if client is None:
        expected: list[type] = [MemoryKeyStore, MemoryRateLimiter, MemoryResponseCache, MemoryUsageStore]
    else:
        expected = [RedisKeyStore, RedisRateLimiter, RedisResponseCache, RedisUsageStore]
    assert [type(store) for store in built] == expected
    cache = built[2]
    assert isinstance(cache, ResponseCache)
    assert cache.redis is client  # how the pipeline knows it can read an entry along with the key
    assert cache.redis_key("abc") == f"{prefix}cache:abc"


# ---------------------------------------------------------------- keys

async def test_key_create_get_and_lookup(keys: KeyStore) -> None:
    secret, record = await keys.create(alias="a", owner="o", tier="gold", rpm=5, models=["chat"], id="forged",
                                       not_a_field=1)
    assert secret.startswith(KEY_PREFIX) and len(secret) > 40
    assert record.display == f"{KEY_PREFIX}…{secret[-4:]}" and record.id != "forged" and len(record.id) == 16
    assert (record.alias, record.owner, record.tier, record.rpm, record.models) == ("a", "o", "gold", 5, ["chat"])
    assert not record.revoked and not record.expired
    assert await keys.get(record.id) == record
    assert await keys.lookup_with(secret, None) == (record, MISSING)
    assert await keys.lookup_with(KEY_PREFIX + "not-a-key", None) == (None, MISSING)
    assert await keys.get("no-such-id") is None


async def test_key_remembered_tier_follows_lookups(keys: KeyStore) -> None:
    secret, _ = await keys.create(alias="a", tier="gold")
    assert keys.remembered_tier(secret) is None  # a guess from lookups, and there was none yet
    await keys.lookup_with(secret, None)
    assert keys.remembered_tier(secret) == "gold"
    assert keys.remembered_tier(KEY_PREFIX + "never-seen") is None
    record = (await keys.lookup_with(secret, None))[0]
    await keys.update(record.id, {"tier": "silver"})
    assert keys.remembered_tier(secret) == "silver", "an edit on this replica is remembered at once, by both stores"


async def test_key_import_duplicate_and_list(keys: KeyStore) -> None:
    legacy = "legacy-secret-0123456789abcdef"
    secret, imported = await keys.create(legacy, alias="imported")
    assert secret == legacy and imported.display == "…cdef"
    with pytest.raises(KeyExists):
        await keys.create(legacy, alias="again")
    _, short = await keys.create("short", alias="short")
    assert short.display == "(imported)"  # too little of it to show any
    _, minted = await keys.create(alias="minted")
    assert [r.alias for r in await keys.list()] == ["imported", "short", "minted"]  # oldest first
    assert (await keys.lookup_with(legacy, None))[0] == imported


async def test_key_update_revoke_and_expiry(keys: KeyStore) -> None:
    secret, record = await keys.create(alias="a")
    updated = await keys.update(record.id, {"alias": "b", "rpm": 7, "id": "forged", "display": "x"})
    assert updated is not None and (updated.alias, updated.rpm) == ("b", 7)
    assert (updated.id, updated.display, updated.created_at) == (record.id, record.display, record.created_at)
    assert await keys.get(record.id) == updated
    assert await keys.update("no-such-id", {"alias": "c"}) is None
    revoked = await keys.revoke(record.id)
    assert revoked is not None and revoked.revoked
    found, _ = await keys.lookup_with(secret, None)
    assert found is not None and found.revoked
    assert await keys.revoke("no-such-id") is None

    old, _ = await keys.create(alias="old", expires_at=time.time() - 1)
    later, _ = await keys.create(alias="later", expires_at=time.time() + 3600)
    assert (await keys.lookup_with(old, None))[0].expired  # type: ignore[union-attr]
    assert not (await keys.lookup_with(later, None))[0].expired  # type: ignore[union-attr]


# ---------------------------------------------------------------- rate limits

async def test_limiter_burst_of_exactly_n_then_refused(limiter: RateLimiter) -> None:
    spec = LimitSpec(rpm=3)
    results = [await limiter.acquire("key:a", spec, 0) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining_requests for r in results] == [2, 1, 0, 0]
    refused = results[-1]
    assert refused.reason == "requests" and 19.0 < refused.retry_after_s <= 20.0  # one interval: 60 s / 3
    assert (await limiter.acquire("key:b", spec, 0)).allowed  # subjects are independent


async def test_limiter_reserves_both_or_neither(limiter: RateLimiter) -> None:
    spec = LimitSpec(rpm=2, tpm=100)
    assert (await limiter.acquire("key:t", spec, 80)).allowed
    refused = await limiter.acquire("key:t", spec, 50)
    assert not refused.allowed and refused.reason == "tokens"
    assert refused.remaining_requests == 1  # the refusal took no request slot
    last = await limiter.acquire("key:t", spec, 20)
    assert last.allowed and last.remaining_requests == 0 and last.remaining_tokens == 0
    assert (await limiter.acquire("key:t", spec, 0)).reason == "requests"


async def test_limiter_never_fits_and_headers(limiter: RateLimiter) -> None:
    spec = LimitSpec(rpm=60, tpm=1000)
    never = await limiter.acquire("key:n", spec, 1001)
    assert not never.allowed and never.reason == "tokens" and never.retry_after_s == -1
    assert never.remaining_requests == 60 and never.remaining_tokens == 1000  # nothing consumed
    result = await limiter.acquire("key:n", spec, 250)
    assert result.headers() == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750", "x-ratelimit-reset-tokens": "15s",
    }


@pytest.mark.parametrize("written_by", ["flush", "next acquire"])
async def test_limiter_adjust_corrects_the_reservation(limiter: RateLimiter, written_by: str) -> None:
    spec = LimitSpec(tpm=1000)
    first = await limiter.acquire("key:j", spec, 600)
    assert first.allowed and first.remaining_tokens == 400
    assert not (await limiter.acquire("key:j", spec, 500)).allowed
    await limiter.adjust("key:j", spec, -400)  # it used 200, not 600
    if written_by == "flush":
        await limiter.flush()
    after = await limiter.acquire("key:j", spec, 500)
    assert after.allowed and 300 <= after.remaining_tokens <= 305  # plus ~1 token per 60 ms of refill
    await limiter.adjust("key:j", spec, 5000)  # far more than reserved: a debt, never refused
    await limiter.flush()
    owed = await limiter.acquire("key:j", spec, 0)
    assert not owed.allowed and owed.reason == "tokens" and owed.remaining_tokens == 0
    await limiter.adjust("key:j", spec, -100_000)  # back to a full bucket, never beyond
    await limiter.flush()
    full = await limiter.acquire("key:j", spec, 1000)
    assert full.allowed and full.remaining_tokens == 0


async def test_limiter_unlimited_validation_and_reset(limiter: RateLimiter) -> None:
    assert await limiter.acquire("key:u", LimitSpec(), 10**9) == LimitResult(True, None, 0.0)
    await limiter.adjust("key:u", LimitSpec(rpm=5), 100)  # no token limit: nothing to correct
    with pytest.raises(ValueError):
        await limiter.acquire("key:u", LimitSpec(tpm=10), -1)
    spec = LimitSpec(rpm=1, tpm=10)
    assert (await limiter.acquire("key:u", spec, 10)).allowed
    assert not (await limiter.acquire("key:u", spec, 0)).allowed
    await limiter.reset("key:u")
    again = await limiter.acquire("key:u", spec, 10)
    assert again.allowed and again.remaining_requests == 0 and again.remaining_tokens == 0


# ---------------------------------------------------------------- response cache

BODY: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "héllo ✓"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


async def test_cache_put_get_overwrite_delete(cache: ResponseCache) -> None:
    assert await cache.get("k") is None
    assert await cache.put("k", BODY, ttl_s=60) is True
    entry = await cache.get("k")
    assert entry is not None and entry.body == BODY and entry.fresh
    assert entry.fresh_until - entry.stored_at == pytest.approx(60) and entry.stale_until == entry.fresh_until
    assert 0 <= entry.age_s < 5
    entry.body["choices"] = []  # callers may mutate what they get
    assert (await cache.get("k")).body == BODY  # type: ignore[union-attr]
    assert await cache.put("k", {**BODY, "id": "chatcmpl-2"}, ttl_s=60)
    assert (await cache.get("k")).body["id"] == "chatcmpl-2"  # type: ignore[union-attr]
    await cache.delete("k")
    assert await cache.get("k") is None
    await cache.delete("k")  # deleting what is gone is fine


async def test_cache_fresh_then_stale_then_gone(cache: ResponseCache) -> None:
    await cache.put("graced", BODY, ttl_s=0.3, stale_grace_s=0.3)
    await cache.put("plain", BODY, ttl_s=0.3)
    assert (await cache.get("graced")).fresh  # type: ignore[union-attr]
    await asyncio.sleep(0.4)
    stale = await cache.get("graced")
    assert stale is not None and not stale.fresh and stale.body == BODY
    assert await cache.get("plain") is None  # no grace: gone when no longer fresh
    await asyncio.sleep(0.35)
    assert await cache.get("graced") is None


async def test_cache_max_entry_bytes_and_bad_ttls(cache: ResponseCache) -> None:
    big = {**BODY, "choices": [{**BODY["choices"][0], "message": {"role": "assistant", "content": "x" * 5000}}]}
    assert await cache.put("big", big, ttl_s=60, max_entry_bytes=4096) is False
    assert await cache.get("big") is None
    assert await cache.put("big", BODY, ttl_s=60) is True
    assert await cache.put("big", big, ttl_s=60, max_entry_bytes=4096) is False
    assert (await cache.get("big")).body == BODY  # type: ignore[union-attr]  # a refused put leaves what was there
    assert await cache.put("big", big, ttl_s=60, max_entry_bytes=8192) is True
    for ttl_s, grace in ((0, 0), (-1, 0), (1, -1)):
        with pytest.raises(ValueError):
            await cache.put("bad", BODY, ttl_s=ttl_s, stale_grace_s=grace)
    assert await cache.get("bad") is None


def test_cache_decode_is_the_same_for_both(cache: ResponseCache) -> None:
    for foreign in (None, b"", b"not json", b"[]", b'{"body": {}}', b'{"body": [], "stored_at": 0, '
                    b'"fresh_until": 1e12, "stale_until": 1e12}'):
        assert cache.decode(foreign) is None
    entry = cache.decode(b'{"body": {"a": 1}, "stored_at": 1, "fresh_until": 2, "stale_until": 1e12}')
    assert entry is not None and entry.body == {"a": 1} and not entry.fresh


# ---------------------------------------------------------------- usage

async def test_usage_spend_per_budget_period(usage: UsageStore) -> None:
    for _ in range(2):
        await usage.record(key_id="k1", route="r", prompt_tokens=1, completion_tokens=1, cost_usd=0.25,
                           budget_period="monthly", deployment="d")
    await usage.record(key_id="k1", route="r", prompt_tokens=1, completion_tokens=1, cost_usd=1.0,
                       budget_period="daily", deployment="d")
    await usage.record(key_id="k1", route="r", prompt_tokens=1, completion_tokens=1, cost_usd=9.0)  # no budget
    await usage.record(key_id=None, route="r", prompt_tokens=1, completion_tokens=1, cost_usd=9.0,
                       budget_period="total")  # no key: no budget either
    assert await usage.spend("k1", "monthly") == pytest.approx(0.5)
    assert await usage.spend("k1", "daily") == pytest.approx(1.0)
    assert await usage.spend("k1", "total") == 0.0
    assert await usage.spend("k2", "monthly") == 0.0
    await usage.flush()
    assert await usage.spend("k1", "monthly") == pytest.approx(0.5)  # a flush does not count it twice


async def test_usage_reports(usage: UsageStore) -> None:
    today = period_id("daily")
    await usage.record(key_id="k1", route="r1", prompt_tokens=10, completion_tokens=5, cost_usd=0.1, deployment="d1")
    await usage.record(key_id="k1", route="r1", prompt_tokens=1, completion_tokens=2, cost_usd=0.2, deployment="d2")
    await usage.record(key_id=None, route="r2", prompt_tokens=3, completion_tokens=0, cost_usd=0.0)  # from cache
    await usage.record(key_id="k2", route="r1", prompt_tokens=4, completion_tokens=4, cost_usd=0.5,
                       budget_period="total", deployment="d1")

    def row(key_id: str | None, route: str, n: int, p: int, c: int, usd: float) -> dict[str, Any]:
        return {"day": today, "key_id": key_id, "route": route, "requests": n, "prompt_tokens": p,
                "completion_tokens": c, "cost_usd": usd}

    def by_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=lambda r: (r["key_id"] or "", r["route"]))

    expected = [row(None, "r2", 1, 3, 0, 0.0), row("k1", "r1", 2, 11, 7, 0.3), row("k2", "r1", 1, 4, 4, 0.5)]
    for _ in range(2):  # reading flushes (Redis): a second report counts nothing twice
        assert by_key(await usage.report([today])) == expected
    assert await usage.report([today], key_id="k1") == [row("k1", "r1", 2, 11, 7, 0.3)]
    assert await usage.report(["1999-01-01"]) == []
    deployments = sorted(await usage.report_deployments([today]), key=lambda r: (r["route"], r["deployment"]))
    assert [(r["route"], r["deployment"], r["requests"], r["prompt_tokens"], r["cost_usd"]) for r in deployments] == [
        ("r1", "d1", 2, 14, 0.6), ("r1", "d2", 1, 1, 0.2), ("r2", "cache", 1, 3, 0.0)]
    assert all(r["day"] == today for r in deployments)


async def test_usage_is_split_by_tier_and_one_budget_counts_every_tier(usage: UsageStore) -> None:
    today = period_id("daily")
    await usage.record(key_id="k1", route="r", prompt_tokens=10, completion_tokens=5, cost_usd=0.1,
                       budget_period="daily", deployment="d")
    for _ in range(3):  # a batch's lines, on the same key and route
        await usage.record(key_id="k1", route="r", prompt_tokens=4, completion_tokens=2, cost_usd=0.25,
                           budget_period="daily", deployment="d", tier="batch")
    await usage.record(key_id="k1", route="r", prompt_tokens=1, completion_tokens=1, cost_usd=0.5,
                       budget_period="daily", deployment="d2", tier="near-real-time")
    await usage.record(key_id="k1", route="r", prompt_tokens=2, completion_tokens=0, cost_usd=0.0, tier="batch")
    assert await usage.spend("k1", "daily") == pytest.approx(0.1 + 0.75 + 0.5), "one budget, whatever the tier"
    for _ in range(2):  # reading flushes (Redis): a second report counts nothing twice
        assert await usage.report([today]) == [  # without tiers: the totals, as before
            {"day": today, "key_id": "k1", "route": "r", "requests": 6, "prompt_tokens": 25, "completion_tokens": 12,
             "cost_usd": 1.35}]
        by_tier = {r["tier"]: r for r in await usage.report([today], by_tier=True)}
        assert next(iter(by_tier)) == "interactive"
        assert {t: (r["requests"], r["prompt_tokens"], r["completion_tokens"], r["cost_usd"])
                for t, r in by_tier.items()} == {"interactive": (1, 10, 5, 0.1), "batch": (4, 14, 6, 0.75),
                                                 "near-real-time": (1, 1, 1, 0.5)}
        assert all((r["day"], r["key_id"], r["route"]) == (today, "k1", "r") for r in by_tier.values())
    deps = {(r["deployment"], r["tier"]): (r["requests"], r["cost_usd"])
            for r in await usage.report_deployments([today])}
    assert deps == {("d", "interactive"): (1, 0.1), ("d", "batch"): (3, 0.75), ("d2", "near-real-time"): (1, 0.5),
                    ("cache", "batch"): (1, 0.0)}, "a deployment that only one tier used has no row of the other"


def test_a_row_without_tier_fields_is_all_interactive() -> None:
    assert split_tiers({"requests": 2, "prompt_tokens": 3, "completion_tokens": 1, "cost_usd": 0.5}) == {
        "interactive": {"requests": 2, "prompt_tokens": 3, "completion_tokens": 1, "cost_usd": 0.5}}
    assert split_tiers({"requests": 2, "prompt_tokens": 3, "completion_tokens": 1, "cost_usd": 0.3,
                        "batch:requests": 2, "batch:prompt_tokens": 3, "batch:completion_tokens": 1,
                        "batch:cost_usd": 0.3}) == {
        "batch": {"requests": 2, "prompt_tokens": 3, "completion_tokens": 1, "cost_usd": 0.3}}, "nothing left over"


# ---------------------------------------------------------------- what only Redis has

async def test_redis_key_lookup_reads_an_extra_key_along(redis_only: Backend) -> None:
    client, prefix = redis_only
    assert client is not None
    keys = key_store(client, prefix)
    secret, record = await keys.create(alias="a")
    await client.set(f"{prefix}extra", b"value")
    assert await keys.lookup_with(secret, f"{prefix}extra") == (record, b"value")
    assert await keys.lookup_with(secret, f"{prefix}absent") == (record, None)  # read, and absent
    assert await key_store(None).lookup_with(secret, f"{prefix}extra") == (None, MISSING)  # never read


async def test_redis_key_outage_answers_from_the_last_record_seen(redis_only: Backend) -> None:
    client, prefix = redis_only
    assert client is not None
    keys = RedisKeyStore(client, prefix)
    seen, record = await keys.create(alias="seen")
    unseen, _ = await keys.create(alias="unseen")
    await keys.lookup_with(seen, None)
    await keys.revoke(record.id)  # the outage copy follows the change at once
    async with _dead_redis() as dead:
        keys.redis = dead
        found, extra = await keys.lookup_with(seen, f"{prefix}extra")
        assert found is not None and found.revoked and extra is MISSING
        with pytest.raises(StoreUnavailable):
            await keys.lookup_with(unseen, None)
        with pytest.raises(StoreUnavailable):
            await keys.list()


async def test_redis_usage_kept_before_tiers_reads_as_interactive(redis_only: Backend) -> None:
    """Rows an older version wrote (no tier fields) are interactive; new counts add to them."""
    client, prefix = redis_only
    assert client is not None
    today = period_id("daily")
    await client.hset(f"{prefix}usage:{today}:k1:r", mapping={"requests": 5, "prompt_tokens": 50,
                                                              "completion_tokens": 20, "cost_usd": "0.5"})
    await client.sadd(f"{prefix}usage:index:{today}", "k1|r")
    await client.hset(f"{prefix}usage-dep:{today}:r:d", mapping={"requests": 5, "prompt_tokens": 50,
                                                                 "completion_tokens": 20, "cost_usd": "0.5"})
    await client.sadd(f"{prefix}usage-dep:index:{today}", "r|d")
    usage = usage_store(client, prefix)
    await usage.record(key_id="k1", route="r", prompt_tokens=4, completion_tokens=1, cost_usd=0.25, deployment="d",
                       tier="batch")
    assert [(r["tier"], r["requests"], r["prompt_tokens"], r["cost_usd"])
            for r in await usage.report([today], by_tier=True)] == [("interactive", 5, 50, 0.5), ("batch", 1, 4, 0.25)]
    assert [(r["requests"], r["cost_usd"]) for r in await usage.report([today])] == [(6, 0.75)]
    assert [(r["tier"], r["requests"]) for r in await usage.report_deployments([today])] == [
        ("interactive", 5), ("batch", 1)]


async def test_redis_stores_raise_store_unavailable() -> None:
    async with _dead_redis() as dead:
        prefix = unique_prefix()
        usage = usage_store(dead, prefix)
        calls = [key_store(dead, prefix).create(alias="a"), key_store(dead, prefix).get("id"),
                 rate_limiter(dead, prefix).acquire("key:x", LimitSpec(rpm=1), 0),
                 rate_limiter(dead, prefix).reset("key:x"),
                 response_cache(dead, prefix).get("k"), response_cache(dead, prefix).put("k", BODY, ttl_s=1),
                 usage.record(key_id="k", route="r", prompt_tokens=1, completion_tokens=1, cost_usd=1.0,
                              budget_period="total"),
                 usage.spend("k", "total")]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call
        with pytest.raises(StoreUnavailable):
            await usage.flush()  # the refused spend waits in the batch ...
        with pytest.raises(StoreUnavailable):
            await usage.flush()  # ... and is still there for the next try
