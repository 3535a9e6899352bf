"""Two gateway replicas sharing one real Redis: cache, exact limits, revocation and budgets hold across both."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import httpx
import pytest

from backends.model_cards import load_cards
from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import OPENAI_KEY, Sims, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply, words
from tests.sim.text import prompt_tokens
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-test-0123456789"
MSGS = [{"role": "user", "content": "Shared state"}]


def shared_config(s: Sims, prefix: str) -> dict[str, Any]:
    return {
        "redis": {"url": require_redis(), "prefix": prefix},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"},
                      "openai": {"kind": "openai", "base_url": f"{s.gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"},
                        {"name": "gpt", "provider": "openai", "model": "sim-model", "card": "gpt-4o-mini"}],
        "routes": [{"name": "chat", "deployments": ["a"]}, {"name": "paid", "deployments": ["gpt"]}],
        "health_checks": {"interval_s": 5},
        "usage": {"flush_interval_s": 0.2},
    }


@pytest.fixture
def pair(sims: Sims) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    sims.reset()
    cfg = shared_config(sims, unique_prefix())
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY}
    with GatewayProcess(cfg, env=env) as a, GatewayProcess(cfg, env=env) as b:
        yield a, b
    sims.reset()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create_key(g: GatewayProcess, **fields: Any) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "t", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def chat(g: GatewayProcess, key: str, model: str = "chat", **body: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=30,
                      json={"model": model, "messages": MSGS, **body})


def test_a_miss_on_one_replica_is_a_hit_on_the_other(pair, sims: Sims) -> None:
    a, b = pair
    assert chat(a, MASTER, temperature=0).headers["x-gateway-cache"] == "miss"
    assert chat(b, MASTER, temperature=0).headers["x-gateway-cache"] == "hit"
    assert sims.a.count("/v1/chat/completions") == 1


def test_rpm_limit_is_exact_across_replicas(pair) -> None:
    a, b = pair
    key = create_key(a, rpm=15)

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            reqs = [client.post(f"{g.base_url}/chat/completions", headers=auth(key),
                                json={"model": "chat", "messages": MSGS, "temperature": 1})
                    for g in (a, b) for _ in range(20)]
            return await asyncio.gather(*reqs)

    results = asyncio.run(fire())
    ok = [r for r in results if r.status_code == 200]
    limited = [r for r in results if r.status_code == 429]
    assert len(ok) == 15 and len(limited) == 25, [r.status_code for r in results]
    err = limited[0].json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].headers["x-ratelimit-limit-requests"] == "15"
    assert limited[0].headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-ratelimit-reset-requests" in ok[0].headers


def test_revoked_on_one_replica_is_refused_by_the_other(pair) -> None:
    a, b = pair
    key = create_key(a)
    assert chat(b, key).status_code == 200
    key_id = httpx.get(f"{a.root_url}/admin/keys", headers=auth(MASTER)).json()["data"][-1]["id"]
    assert httpx.delete(f"{a.root_url}/admin/keys/{key_id}", headers=auth(MASTER)).status_code == 200
    r = chat(b, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


BUDGET_USD = 0.00002


def paid_answer_cost() -> tuple[int, int, float]:
    """(prompt, completion) tokens the OpenAI simulator reports for MSGS, and their price on gpt-4o-mini's card."""
    pricing = load_cards()["gpt-4o-mini"].pricing
    assert pricing is not None
    prompt, completion = prompt_tokens(MSGS), len(words(canonical_reply(MSGS)))
    return prompt, completion, (prompt * pricing.input_per_mtok + completion * pricing.output_per_mtok) / 1e6


def answers_within_budget(cost: float) -> int:
    """Requests served before the budget refuses: each one is checked against the spend before it."""
    served, spent = 0, 0.0
    while spent < BUDGET_USD:
        served, spent = served + 1, spent + cost
    return served


def test_budget_is_exhausted_across_replicas(pair) -> None:
    a, b = pair
    prompt, completion, cost = paid_answer_cost()  # 2 and 13 tokens: $0.0000081 at $0.15 / $0.60 per 1M tokens
    expected = answers_within_budget(cost)
    assert expected == 3
    key = create_key(a, budget_usd=BUDGET_USD, budget_period="daily")
    served = 0
    for g in (a, b, a, b, a, b):
        r = chat(g, key, model="paid")
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "insufficient_quota"
            break
        assert r.status_code == 200
        usage = r.json()["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (prompt, completion)
        served += 1
    assert served == expected
    for g in (a, b):
        assert chat(g, key, model="paid").json()["error"]["code"] == "insufficient_quota"
    def all_counted() -> list[dict[str, Any]] | None:
        usage = httpx.get(f"{a.root_url}/admin/usage", headers=auth(MASTER)).json()
        rows = [r for r in usage["rows"] if r["route"] == "paid"]
        return rows if sum(r["requests"] for r in rows) >= served else None

    # B's batched counters reach Redis within its 0.2 s flush interval; a busy machine may take longer.
    rows = wait_until(all_counted, timeout=30, what="both replicas' usage in Redis")
    assert sum(r["requests"] for r in rows) == served, rows
    assert sum(r["cost_usd"] for r in rows) == pytest.approx(served * cost, abs=1e-8), rows


def test_bad_keys_and_headers_get_401_or_403_and_leak_nothing(pair) -> None:
    a, _ = pair
    limited = create_key(a, models=["chat"])
    cases = [
        ({}, 401), ({"Authorization": "Bearer sk-gw-doesnotexist"}, 401), ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer"}, 401), ({"Authorization": "Bearer " + "x" * 5000}, 401),
        ({"Authorization": "Bearer sk-gw-\u00e9t\u00e9".encode("latin-1")}, 401), ({"Authorization": "sk-gw-abc"}, 401),
    ]
    for headers, status in cases:
        r = httpx.post(f"{a.base_url}/chat/completions", headers=headers, json={"model": "chat", "messages": MSGS})
        assert r.status_code == status, (headers, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"
        for secret_word in ("redis", "hash", "sha256", "gwtest", "Traceback"):
            assert secret_word not in r.text.lower()
    r = chat(a, limited, model="paid")
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    assert chat(a, limited).status_code == 200
    assert httpx.get(f"{a.base_url}/models").status_code == 401
    listing = httpx.get(f"{a.root_url}/admin/keys", headers=auth(MASTER)).text
    assert limited not in listing, "keys are stored hashed and never listed"
    assert httpx.get(f"{a.root_url}/admin/keys", headers=auth(limited)).status_code == 401


def _remaining_tokens(r: httpx.Response) -> int:
    return int(r.headers["x-ratelimit-remaining-tokens"])


def test_tpm_reserves_then_corrects_to_real_usage(pair, sims: Sims) -> None:
    """tpm=400 is 1 token per 150 ms. A request reserves its prompt estimate plus max_tokens while it is in flight
    (seen from the other replica, through Redis), and its real usage replaces the reservation once it is answered.

    x-ratelimit-remaining-tokens is 400 - held + refill, where held is what the reservations and corrections add
    up to and refill is at most floor((ms since the first reservation + 1) / 150)."""
    a, b = pair
    key = create_key(a, tpm=400)
    started = time.monotonic()

    def refill() -> int:  # the most the bucket can have refilled since `started`
        return int(((time.monotonic() - started) * 1000 + 1) // 150)

    def assert_held(r: httpx.Response, held: int) -> None:
        assert 400 - held <= _remaining_tokens(r) <= 400 - held + refill(), (held, refill(), dict(r.headers))

    sims.a.add_fault(Fault.latency(5.0))  # the first request's upstream takes 5 s to answer
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(chat, a, key, max_tokens=300)
        deadline = time.monotonic() + 10
        while sims.a.inflight == 0 and not slow.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sims.a.inflight == 1, "the slow request never reached its upstream"
        # In flight: a second 300-token request does not fit, on the other replica either ...
        refused = chat(b, key, max_tokens=300)
        # ... but a 1-token one does, and it sees the first one's tokens held.
        small = chat(b, key, max_tokens=1)
        assert sims.a.inflight == 1 and not slow.done(), "the slow request finished too early for this check"
        first = slow.result(timeout=30)
    assert first.status_code == 200, first.text
    assert int(first.headers["x-ratelimit-limit-tokens"]) == 400
    reserved = 400 - _remaining_tokens(first)  # exact: the bucket was full, nothing had refilled yet
    estimate = reserved - 300  # the gateway's estimate of the prompt
    assert 1 <= estimate <= 50, dict(first.headers)
    assert refused.status_code == 429, refused.text
    err = refused.json()["error"]
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "Rate limit reached for tokens" in err["message"] and int(refused.headers["retry-after"]) >= 1
    assert_held(refused, reserved)  # a refusal reserves nothing
    assert small.status_code == 200, small.text
    assert_held(small, reserved + estimate + 1)

    # Answered: the real usage (a few tokens) replaces the 300+ reserved. The correction is batched, and reaches
    # Redis with replica A's next flush (every 0.2 s); B's own 1-token requests are corrected with B's next check.
    used, small_used = first.json()["usage"]["total_tokens"], small.json()["usage"]["total_tokens"]
    assert used < reserved - 200 and small_used < estimate + 1, (used, small_used)
    deadline = time.monotonic() + 15  # refill alone would take about 37 s: this shows the correction
    probes = 0
    while True:
        probe = chat(b, key, max_tokens=1)
        probes += 1
        assert probe.status_code == 200, probe.text
        held = used + probes * small_used + estimate + 1
        if _remaining_tokens(probe) >= 400 - held or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert_held(probe, held)
    assert chat(b, key, max_tokens=300).status_code == 200, "the 300 tokens refused in flight fit once corrected"
    huge = chat(b, key, max_tokens=1000)
    assert huge.status_code == 429 and huge.headers.get("x-should-retry") == "false"


def test_streaming_spend_is_counted(pair) -> None:
    a, b = pair
    *_, cost = paid_answer_cost()  # what each streamed answer costs, though this client is shown no usage
    key = create_key(a, budget_usd=BUDGET_USD, budget_period="daily")
    served = 0
    for g in (a, b) * 4:
        r = httpx.post(f"{g.base_url}/chat/completions", headers=auth(key), timeout=30,
                       json={"model": "paid", "messages": MSGS, "stream": True})
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "insufficient_quota"
            break
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
        assert '"usage":{' not in r.text, "usage was asked upstream for accounting, not shown to this client"
        served += 1
    assert served == answers_within_budget(cost) == 3
    assert chat(a, key, model="paid").json()["error"]["code"] == "insufficient_quota"


def test_cli_manages_keys_and_shows_usage(pair) -> None:
    import json
    import subprocess
    import sys

    from tests.server import ROOT

    a, _ = pair
    env = {**os.environ, "LLM_GATEWAY_MASTER_KEY": MASTER, "LLM_GATEWAY_URL": a.root_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60)

    made = cli("keys", "create", "--alias", "cli-key", "--rpm", "5", "--models", "chat", "--expires-in", "1h")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["key"].startswith("sk-gw-") and created["rpm"] == 5 and created["models"] == ["chat"]
    assert chat(a, created["key"]).status_code == 200
    listed = cli("keys", "list")
    assert "cli-key" in listed.stdout and created["key"] not in listed.stdout
    assert cli("keys", "update", created["id"], "--rpm", "9").returncode == 0
    assert cli("keys", "revoke", created["id"]).returncode == 0
    assert chat(a, created["key"]).status_code == 401
    usage = cli("usage", "--json")
    assert usage.returncode == 0 and json.loads(usage.stdout)["totals"]["requests"] >= 1
    bad = subprocess.run([sys.executable, "-m", "gateway", "keys", "list"], cwd=ROOT, capture_output=True, text=True,
                         env={k: v for k, v in env.items() if k != "LLM_GATEWAY_MASTER_KEY"}, timeout=60)
    assert bad.returncode == 2 and "LLM_GATEWAY_ADMIN_KEY" in bad.stderr


def test_an_imported_key_works_on_every_replica_and_cannot_be_imported_twice(pair) -> None:
    """Keys issued by the gateway this one replaces keep working: only their hash is stored."""
    a, b = pair
    secret = "sk-legacy-" + os.urandom(8).hex()
    r = httpx.post(f"{a.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "legacy", "key": secret})
    assert r.status_code == 201, r.text
    assert r.json()["key"] == secret and r.json()["display"] == "…" + secret[-4:]  # never its first characters
    assert chat(b, secret).status_code == 200  # the other replica finds it in Redis
    listed = httpx.get(f"{b.root_url}/admin/keys", headers=auth(MASTER)).text
    assert secret not in listed
    again = httpx.post(f"{b.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "dup", "key": secret})
    assert again.status_code == 409 and again.json()["error"]["code"] == "key_exists"
    for bad in ("short", "has a space in it!!", MASTER):
        refused = httpx.post(f"{a.root_url}/admin/keys", headers=auth(MASTER), json={"alias": "x", "key": bad})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "key", refused.text
        assert bad not in refused.text
    changed = httpx.patch(f"{a.root_url}/admin/keys/{r.json()['id']}", headers=auth(MASTER), json={"key": secret + "x"})
    assert changed.status_code == 400


def test_key_tier_rules_pick_the_route_and_its_cache_entries(sims: Sims) -> None:
    """The cache entry is read with the key, before the key's tier is known; a tier that changes the
    route must never be answered from the other route's entry."""
    sims.reset()
    cfg = shared_config(sims, unique_prefix())
    cfg["routes"][0]["rules"] = [{"when": {"key_tier": "gold"}, "route": "paid"}]
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY}
    with GatewayProcess(cfg, env=env) as g:
        gold, plain = create_key(g, tier="gold"), create_key(g)
        seen = []
        for key in (plain, gold, plain, gold):  # gold's first request finds plain's entry under its guess
            r = chat(g, key, temperature=0)
            assert r.status_code == 200, r.text
            seen.append((r.headers["x-gateway-cache"], r.headers["x-gateway-deployment"], r.json()["id"]))
        assert [s[:2] for s in seen] == [("miss", "a"), ("miss", "gpt"), ("hit", "cache"), ("hit", "cache")]
        assert seen[2][2] == seen[0][2] and seen[3][2] == seen[1][2] and seen[0][2] != seen[1][2]
    sims.reset()
