"""Usage and spend split by tier (interactive, batch): the one place a request's tier is read, its metrics
and log line, `/admin/usage` grouped or filtered by tier, and the cost report's tiers, on the in-process
store and on real Redis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import orjson
import pytest
import redis.asyncio as aioredis

from backends.contract.priority import Priority
from backends.model_cards import ModelCard, load_cards
from gateway import cli_cost, metrics, observe, request_log
from gateway.cost import build_report, render_table
from gateway.observe import RequestRecord
from gateway.settings import Settings
from gateway.usage import period_id
from routing.config import GatewayConfig
from routing.config_file import load_config
from tests.paths import FIXTURES
from tests.redis_env import require_redis, unique_prefix

CARDS_DIR = FIXTURES / "cards"
CONFIG = FIXTURES / "cost_article.yaml"
ADMIN = "adm-tiers-test"


# ---------------------------------------------------------------- the tier of a request

@pytest.mark.parametrize("batch, priority, tier", [
    (None, None, "interactive"),
    ("batch_1", None, "batch"),
    (None, Priority.BATCH, "batch"),
    ("batch_1", Priority.INTERACTIVE, "batch"),  # a batch's line is batch, whatever else is set
    (None, Priority.NEAR_REAL_TIME, "near-real-time"),
    (None, Priority.INTERACTIVE, "interactive"),
])
def test_a_request_s_tier(batch: str | None, priority: Priority | None, tier: str) -> None:
    assert RequestRecord("r", "chat", batch=batch, priority=priority).tier == tier


def test_the_tier_is_counted_and_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[bytes] = []
    monkeypatch.setattr(request_log, "write", lines.append)
    series = metrics.TIER_REQUESTS.labels("batch", "chat-tiers", "200")
    before = series._value.get()
    live = RequestRecord("r1", "chat", route="chat-tiers")
    line = RequestRecord("r2", "chat", route="chat-tiers", batch="batch_9")
    for rec in (live, line):
        rec.begin()
        observe.finish(rec)
    assert series._value.get() == before + 1
    assert metrics.TIER_REQUESTS.labels("interactive", "chat-tiers", "200")._value.get() >= 1
    logged = [orjson.loads(x) for x in lines]
    assert [(x["tier"], x.get("batch_id")) for x in logged] == [("interactive", None), ("batch", "batch_9")]


# ---------------------------------------------------------------- the cost report

@pytest.fixture(scope="module")
def cards() -> dict[str, ModelCard]:
    return load_cards(CARDS_DIR)


@pytest.fixture(scope="module")
def config(cards: dict[str, ModelCard]) -> GatewayConfig:
    return load_config(CONFIG, known_cards=set(cards))


def _row(tier: str | None, requests: int, cost: float, deployment: str = "gpt-article") -> dict[str, Any]:
    row = {"day": "2025-06-01", "route": "classify", "deployment": deployment, "requests": requests,
           "prompt_tokens": requests * 500, "completion_tokens": requests * 50, "cost_usd": cost}
    return row if tier is None else {**row, "tier": tier}


def test_the_cost_report_shows_each_tier(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    rows = [_row(None, 100, 0.2), _row("batch", 40, 0.08), _row("batch", 10, 0.0, "cache"),
            _row("interactive", 20, 0.04)]
    report = build_report(rows, config, cards, days=1)
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert [t["tier"] for t in report["tiers"]] == ["interactive", "batch"], "interactive first; no tier: interactive"
    assert (tiers["interactive"]["requests"], tiers["interactive"]["prompt_tokens"]) == (120, 60_000)
    assert tiers["interactive"]["spend_usd"] == pytest.approx(0.24)
    assert (tiers["batch"]["requests"], tiers["batch"]["completion_tokens"]) == (50, 2_500)
    assert tiers["batch"]["spend_usd"] == pytest.approx(0.08)
    assert tiers["batch"]["cached_requests_per_day"] == 10
    assert report["total"]["requests"] == 170 and report["routes"][0]["requests"] == 170, "the rest as before"
    table = render_table(report)
    batch_line = next(line for line in table.splitlines() if line.startswith("tier batch"))
    assert batch_line.split()[2] == "50" and "$0.08" in batch_line, batch_line
    assert any(line.startswith("tier interactive") for line in table.splitlines())
    assert build_report([], config, cards, days=1)["tiers"] == []


def test_cli_cost_offline_shows_the_batch_tier(config: GatewayConfig, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODEL_CARDS_DIR", str(CARDS_DIR))
    usage = tmp_path / "usage.json"
    usage.write_text(json.dumps([_row(None, 100, 0.2), _row("batch", 40, 0.08)]))
    assert cli_cost.main(["--usage-file", str(usage), "--config", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "tier batch" in out and "tier interactive" in out
    assert cli_cost.main(["--usage-file", str(usage), "--config", str(CONFIG), "--json"]) == 0
    tiers = {t["tier"]: t["requests"] for t in json.loads(capsys.readouterr().out)["tiers"]}
    assert tiers == {"interactive": 100, "batch": 40}


# ---------------------------------------------------------------- /admin/usage and /admin/cost

@pytest.fixture(params=["memory", "redis"])
async def app(request: pytest.FixtureRequest, config: GatewayConfig,
              cards: dict[str, ModelCard]) -> AsyncIterator[Any]:
    from gateway.app import create_app

    settings = Settings(admin_key=ADMIN)
    if request.param == "memory":
        yield create_app(config, cards, settings=settings)
        return
    prefix = unique_prefix()
    cfg = config.model_copy(update={"redis": config.redis.model_copy(update={"prefix": prefix})})
    app = create_app(cfg, cards, redis_url=require_redis(), settings=settings)
    assert app.state.services.link.client is not None, "a Redis-backed usage store"
    yield app
    client = aioredis.Redis.from_url(require_redis())
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    await app.state.services.link.client.aclose()


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                             headers={"Authorization": f"Bearer {ADMIN}"})


async def _record(app: Any) -> None:
    usage = app.state.services.usage
    await usage.record(key_id="k1", route="classify", prompt_tokens=10, completion_tokens=5, cost_usd=0.1,
                       deployment="gpt-article")
    for _ in range(3):
        await usage.record(key_id="k1", route="classify", prompt_tokens=4, completion_tokens=2, cost_usd=0.25,
                           deployment="gpt-article", tier="batch")
    await usage.record(key_id="k2", route="classify", prompt_tokens=1, completion_tokens=1, cost_usd=0.5,
                       deployment="gpt-article")


def _counts(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["requests"], row["prompt_tokens"], row["completion_tokens"], row["cost_usd"]


async def test_admin_usage_groups_and_filters_by_tier(app: Any) -> None:
    await _record(app)
    today = period_id("daily")
    async with _client(app) as client:
        plain = (await client.get("/admin/usage")).json()
        grouped = (await client.get("/admin/usage", params={"group_by": "tier"})).json()
        batch = (await client.get("/admin/usage", params={"tier": "batch"})).json()
        k1_batch = (await client.get("/admin/usage", params={"tier": "BATCH", "key_id": "k1"})).json()
        bad_tier = await client.get("/admin/usage", params={"tier": "gold"})
        bad_group = await client.get("/admin/usage", params={"group_by": "key"})
    # Without tier parameters: a row per day, key and route, as always (no tier field), and the totals.
    assert sorted((r["key_id"], *_counts(r)) for r in plain["rows"]) == [("k1", 4, 22, 11, 0.85),
                                                                         ("k2", 1, 1, 1, 0.5)]
    assert all(set(r) == {"day", "key_id", "route", "requests", "prompt_tokens", "completion_tokens", "cost_usd"}
               and r["day"] == today for r in plain["rows"])
    assert _counts(plain["totals"]) == (5, 23, 12, 1.35)
    assert {t: _counts(v) for t, v in plain["tiers"].items()} == {"interactive": (2, 11, 6, 0.6),
                                                                  "batch": (3, 12, 6, 0.75)}
    assert sorted((r["key_id"], r["tier"], *_counts(r)) for r in grouped["rows"]) == [
        ("k1", "batch", 3, 12, 6, 0.75), ("k1", "interactive", 1, 10, 5, 0.1), ("k2", "interactive", 1, 1, 1, 0.5)]
    assert grouped["totals"] == plain["totals"] and grouped["tiers"] == plain["tiers"]
    assert [(r["key_id"], r["tier"], *_counts(r)) for r in batch["rows"]] == [("k1", "batch", 3, 12, 6, 0.75)]
    assert _counts(batch["totals"]) == (3, 12, 6, 0.75) and list(batch["tiers"]) == ["batch"]
    assert k1_batch["rows"] == batch["rows"]
    assert bad_tier.status_code == 400 and bad_tier.json()["error"]["param"] == "tier"
    assert bad_group.status_code == 400 and bad_group.json()["error"]["param"] == "group_by"


async def test_admin_cost_shows_the_batch_tier(app: Any) -> None:
    await _record(app)
    async with _client(app) as client:
        report = (await client.get("/admin/cost", params={"days": 1})).json()
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert list(tiers) == ["interactive", "batch"]
    assert (tiers["batch"]["requests"], tiers["batch"]["prompt_tokens"]) == (3, 12)
    assert tiers["batch"]["spend_usd"] == pytest.approx(0.75)
    assert tiers["interactive"]["spend_usd"] == pytest.approx(0.6)
    assert report["total"]["requests"] == 5
