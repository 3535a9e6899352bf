"""Two Redis roles: the durable one (keys, usage, limits, batches: never evicts) and the response cache's
own (`redis.cache_url`: bounded, evicts), and the start-up warnings when a server's memory policy does not
fit its role.

Every server here is a private `redis-server` (tests/redis_env.ThrowawayRedis), since the tests change
policies with CONFIG SET, which the shared Redis must never see.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from gateway import redis_memory
from gateway.cache_separate import SeparateRedisCache
from gateway.redis_conn import RedisLink
from gateway.services import Services
from gateway.settings import Settings
from routing import config_checks
from routing.config import ConfigError, GatewayConfig
from routing.config_file import parse_config
from tests.redis_env import ThrowawayRedis, unique_prefix
from tests.routing_env import OPENAI_KEY, Sims, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.waiting import wait_until

MASTER = "sk-master-redis-roles-000"
MB = 1 << 20


# ---------------------------------------------------------------- config and wiring (no server)

def test_cache_url_is_a_secret_kept_as_a_reference_and_resolved_where_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROLES_CACHE_URL", raising=False)
    text = "redis:\n  url: redis://127.0.0.1:1/0\n  cache_url: ${ROLES_CACHE_URL}\n"
    config = parse_config(text, "gw.yaml")  # an unset variable in a secret is no config error ...
    assert config.redis.cache_url == "${ROLES_CACHE_URL}"  # ... and the config never holds the value
    assert any(w.startswith("redis.cache_url: ${ROLES_CACHE_URL}") for w in config_checks.missing_secrets(config))
    assert Services.build(config, "redis://127.0.0.1:1/0", Settings()).cache_link is None  # unset: shared
    monkeypatch.setenv("ROLES_CACHE_URL", "redis://127.0.0.1:2/3")
    svc = Services.build(config, "redis://127.0.0.1:1/0", Settings())
    assert isinstance(svc.cache, SeparateRedisCache) and svc.cache_link is not None
    assert svc.cache.redis is svc.cache_link.client and svc.cache.redis is not svc.link.client
    assert svc.cache_link.client.connection_pool.connection_kwargs["port"] == 2
    assert svc.link.client.connection_pool.connection_kwargs["port"] == 1
    assert not svc.cache.rides_with_keys  # its entries are on another server than the keys


def test_a_literal_password_in_cache_url_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("redis:\n  cache_url: redis://:hunter2@cache:6379/0\n", "gw.yaml")
    assert any("redis.cache_url" in p and "reference" in p for p in err.value.problems), err.value.problems


async def test_the_separate_cache_fails_open_on_its_own_link() -> None:
    """A dead cache Redis: a miss, nothing stored, no exception; the errors are the cache link's to count."""
    link = RedisLink("redis://127.0.0.1:1/0", timeout_s=0.2, role="cache redis")
    cache = SeparateRedisCache(link)
    try:
        assert await cache.get("k") is None
        assert await cache.put("k", {"id": "x"}, ttl_s=60) is False
        await cache.delete("k")
        assert link.errors == 3 and link.degraded and link.status()["last_error"] == "ConnectionError"
    finally:
        await link.aclose()


def test_without_cache_url_the_cache_shares_the_durable_client() -> None:
    svc = Services.build(GatewayConfig(), "redis://127.0.0.1:1/0", Settings())
    assert svc.cache_link is None and svc.cache.redis is svc.link.client and svc.cache.rides_with_keys


# ---------------------------------------------------------------- the policy check, on private servers

@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ThrowawayRedis, ThrowawayRedis]]:
    durable, cache = ThrowawayRedis().start(), ThrowawayRedis().start()
    yield durable, cache
    durable.stop()
    cache.stop()


@pytest.fixture
async def clients(servers: tuple[ThrowawayRedis, ThrowawayRedis]) -> AsyncIterator[tuple[aioredis.Redis, ...]]:
    made = [aioredis.Redis.from_url(s.url, socket_timeout=2, socket_connect_timeout=2) for s in servers]
    yield tuple(made)
    for c in made:
        await c.aclose()


async def _set(client: aioredis.Redis, maxmemory: int, policy: str) -> None:
    await client.config_set("maxmemory", maxmemory)
    await client.config_set("maxmemory-policy", policy)


@pytest.mark.process
async def test_the_right_policies_give_no_warning(clients: tuple[aioredis.Redis, ...]) -> None:
    durable, cache = clients
    await _set(durable, 64 * MB, "noeviction")
    await _set(cache, 32 * MB, "allkeys-lru")
    assert await redis_memory.check(durable, cache) == []
    await _set(durable, 0, "allkeys-lru")  # no maxmemory: nothing is ever evicted
    await _set(cache, 32 * MB, "volatile-lru")  # every cache entry has a TTL
    assert await redis_memory.check(durable, cache) == []


@pytest.mark.process
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl", "allkeys-random"])
async def test_an_evicting_durable_policy_is_a_warning(clients: tuple[aioredis.Redis, ...], policy: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    durable, cache = clients
    await _set(durable, 64 * MB, policy)
    await _set(cache, 32 * MB, "allkeys-lru")
    with caplog.at_level("WARNING", logger="llm_gateway.redis"):
        (line,) = await redis_memory.check(durable, cache)
    assert f"maxmemory 64mb with maxmemory-policy {policy}" in line and "evicts API keys and spend" in line
    assert "noeviction" in line and "redis.url" in line
    assert [r.getMessage() for r in caplog.records if r.name == "llm_gateway.redis"] == [line]


@pytest.mark.process
async def test_a_cache_redis_without_bounds_or_that_refuses_is_a_warning(clients: tuple[aioredis.Redis, ...]) -> None:
    durable, cache = clients
    await _set(durable, 0, "noeviction")
    await _set(cache, 0, "allkeys-lru")
    (line,) = await redis_memory.check(durable, cache)
    assert "cache Redis (redis.cache_url) has no maxmemory" in line and "allkeys-lru" in line
    await _set(cache, 16 * MB, "noeviction")
    (line,) = await redis_memory.check(durable, cache)
    assert "maxmemory 16mb with maxmemory-policy noeviction" in line and "refuses new entries" in line


@pytest.mark.process
async def test_a_cache_that_shares_the_durable_redis_is_a_warning_whatever_its_policy(
        clients: tuple[aioredis.Redis, ...]) -> None:
    durable, _ = clients
    expected = {(0, "noeviction"): "which has no maxmemory",
                (64 * MB, "noeviction"): "Redis refuses every write, spend and new keys included",
                (64 * MB, "allkeys-lru"): "evicts API keys and spend"}
    for (maxmemory, policy), words in expected.items():
        await _set(durable, maxmemory, policy)
        (line,) = await redis_memory.check(durable, None)
        assert words in line and "redis.cache_url" in line, (maxmemory, policy, line)


@pytest.mark.process
async def test_another_db_of_the_same_server_is_not_a_cache_of_its_own(servers: tuple[ThrowawayRedis, ...]) -> None:
    durable_server = servers[0]
    durable = aioredis.Redis(port=durable_server.port, db=0, socket_timeout=2)
    same = aioredis.Redis(port=durable_server.port, db=10, socket_timeout=2)
    try:
        await _set(durable, 64 * MB, "noeviction")
        lines = await redis_memory.check(durable, same)
        assert any("name the same Redis server" in line for line in lines), lines
    finally:
        await durable.aclose()
        await same.aclose()


@pytest.mark.process
async def test_a_refused_config_get_falls_back_to_info_then_says_so_once_and_starts() -> None:
    no_config = ThrowawayRedis("--rename-command", "CONFIG", "", "--maxmemory", "8mb",
                               "--maxmemory-policy", "allkeys-lru").start()
    locked = ThrowawayRedis("--rename-command", "CONFIG", "", "--rename-command", "INFO", "").start()
    a = aioredis.Redis.from_url(no_config.url, socket_timeout=2)
    b = aioredis.Redis.from_url(locked.url, socket_timeout=2)
    try:
        with pytest.raises(redis_sync.ResponseError):
            await a.config_get("maxmemory")  # a managed Redis's way of saying no
        (line,) = await redis_memory.check(a, None)
        assert "maxmemory 8mb with maxmemory-policy allkeys-lru" in line  # read through INFO memory
        lines = await redis_memory.check(b, None)
        assert len(lines) == 1 and "cannot check the memory policy of the durable Redis" in lines[0], lines
        assert "CONFIG GET refused" in lines[0] and "INFO memory refused" in lines[0] and "noeviction" in lines[0]
    finally:
        await a.aclose()
        await b.aclose()
        no_config.stop()
        locked.stop()


async def test_an_unreachable_redis_is_said_not_raised() -> None:
    dead = aioredis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    lines = await redis_memory.check(None, dead)
    assert len(lines) == 1 and "cache Redis" in lines[0] and "unreachable" in lines[0], lines


# ---------------------------------------------------------------- a real gateway on both

@pytest.fixture
def two_servers() -> Iterator[tuple[ThrowawayRedis, ThrowawayRedis]]:
    durable, cache = ThrowawayRedis().start(), ThrowawayRedis().start()
    yield durable, cache
    durable.stop()
    cache.stop()


def _keys(url: str, prefix: str) -> list[str]:
    with redis_sync.Redis.from_url(url, socket_timeout=2) as r:
        return sorted(k.decode() for k in r.scan_iter(match=f"{prefix}*"))


def _ready(gw: GatewayProcess) -> httpx.Response:
    return httpx.get(f"{gw.root_url}/ready", headers={"Authorization": f"Bearer {MASTER}"}, timeout=5)


def _chat(gw: GatewayProcess, key: str, text: str) -> httpx.Response:
    return httpx.post(f"{gw.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=10,
                      json={"model": "chat", "temperature": 0, "messages": [{"role": "user", "content": text}]})


@pytest.mark.process
def test_the_cache_on_its_own_redis_keys_and_usage_on_the_durable_one(
        sims: Sims, two_servers: tuple[ThrowawayRedis, ThrowawayRedis]) -> None:  # noqa: F811
    durable, cache = two_servers
    with redis_sync.Redis.from_url(durable.url) as r:  # an evicting durable policy: the start-up warns
        r.config_set("maxmemory", 64 * MB)
        r.config_set("maxmemory-policy", "allkeys-lru")
    sims.reset()
    prefix = unique_prefix()
    config: dict[str, Any] = {
        "redis": {"url": durable.url, "cache_url": "${ROLES_CACHE_URL}", "prefix": prefix, "timeout_s": 0.2,
                  "degraded_for_s": 2},
        "usage": {"flush_interval_s": 0.2},
        "providers": {"gpt": {"kind": "openai", "base_url": f"{sims.gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"}},
        "deployments": [{"name": "gpt", "provider": "gpt", "model": "sim-model", "card": "gpt-4o-mini"}],
        "routes": [{"name": "chat", "deployments": ["gpt"]}],
        "health_checks": {"interval_s": 5}}
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY, "ROLES_CACHE_URL": cache.url}
    try:
        with GatewayProcess(config, env=env) as gw:
            logs = gw.logs(None)
            assert "maxmemory 64mb with maxmemory-policy allkeys-lru" in logs, logs[-3000:]
            assert "the cache Redis (redis.cache_url) has no maxmemory" in logs, logs[-3000:]
            made = httpx.post(f"{gw.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                              json={"alias": "roles"}, timeout=10)
            assert made.status_code == 201, made.text
            key = made.json()["key"]
            assert _chat(gw, key, "where do you live?").headers["x-gateway-cache"] == "miss"
            assert _chat(gw, key, "where do you live?").headers["x-gateway-cache"] == "hit"
            assert sims.gpt.count("/v1/chat/completions") == 1
            # The entry is on the cache's server and only there; the key and its usage on the durable one.
            cached = _keys(cache.url, prefix)
            assert cached and all(k.startswith(f"{prefix}cache:") for k in cached), cached
            wait_until(lambda: any(k.startswith(f"{prefix}usage:") for k in _keys(durable.url, prefix)),
                       what="usage flushed to the durable Redis")
            kept = _keys(durable.url, prefix)
            assert any(k.startswith(f"{prefix}key:") for k in kept), kept
            assert not [k for k in kept if k.startswith(f"{prefix}cache:")], kept
            ready = _ready(gw)
            assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
            assert ready.json()["redis"]["state"] == "ok" and ready.json()["cache_redis"]["state"] == "ok"
            # The cache's Redis dies: requests are served uncached (as with a shared Redis down), keys still
            # work, and the durable Redis is not reported degraded for it. /ready stays 200 and says which.
            cache.stop()
            for text in ("where do you live?", "and after the outage?"):
                r = _chat(gw, key, text)
                assert r.status_code == 200 and r.headers["x-gateway-cache"] == "miss", (r.status_code, r.text)
            assert "cache redis unavailable" in gw.logs(None)
            ready = _ready(gw)
            body = ready.json()
            assert ready.status_code == 200 and body["status"] == "degraded", ready.text
            assert body["degraded"] == ["cache_redis"] and body["redis"]["state"] == "ok", body
            assert body["cache_redis"]["state"] == "degraded" and body["cache_redis"]["errors"] >= 2, body
            assert body["cache_redis"]["last_error"] == "ConnectionError", body
            # ... and comes back: the cache works again, and /ready says so once the errors are old.
            cache.start()
            _chat(gw, key, "back again")
            wait_until(lambda: _chat(gw, key, "back again").headers["x-gateway-cache"] == "hit",
                       what="the cache working again once its Redis is back")
            wait_until(lambda: _ready(gw).json()["status"] == "ready", what="/ready ready again")
            # The durable Redis dies: as without a cache of its own, degraded and still 200 (keys are
            # remembered, limits fail open); the cache's server is not blamed for it.
            durable.stop()
            assert _chat(gw, key, "while the durable one is down").status_code == 200  # the key is remembered
            wait_until(lambda: _ready(gw).json()["redis"]["state"] == "degraded",
                       what="the usage flush finding the durable Redis down")
            ready = _ready(gw)
            body = ready.json()
            assert ready.status_code == 200 and body["degraded"] == ["redis"], ready.text
            assert body["cache_redis"]["state"] == "ok", body
    finally:
        sims.reset()

