"""The cost report reproduces "The Cost Equation" (shared/reference/model-serving.md) from usage counts.

Article: $0.002/request x 100,000/day x 30 = $6,000/month on the API; 2 x $1.006/h x 24 x 30 + $5,000
engineering = $6,448.64 (~$6,449) self-hosted; break-even near 100K/day (exactly 107,477); at 500K/day
self-hosting wins ~4x (4.65x); at 10K/day the API wins.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backends.model_cards import ModelCard, load_cards
from gateway import cli_cost
from gateway.cost import build_report, render_table
from gateway.store_errors import StoreUnavailable
from routing.config import GatewayConfig
from routing.config_file import load_config
from tests.paths import FIXTURES, ROOT

CARDS_DIR = FIXTURES / "cards"
CONFIG = FIXTURES / "cost_article.yaml"
USAGE = FIXTURES / "usage_article.json"
API, HOST = "gpt-3.5-turbo-article", "classifier-gpu"
SELF_HOSTED = 1.006 * 24 * 30 * 2 + 5000  # 6448.64
BREAK_EVEN = SELF_HOSTED / (0.002 * 30)  # 107,477.33 requests/day


@pytest.fixture(scope="module")
def cards() -> dict[str, ModelCard]:
    return load_cards(CARDS_DIR)  # the test-only card lives there, not in model-cards/


@pytest.fixture(scope="module")
def config(cards: dict[str, ModelCard]) -> GatewayConfig:
    return load_config(CONFIG, known_cards=set(cards))


def article_rows(scale: float = 1.0) -> list[dict[str, Any]]:
    """The fixture's 30 days of 100K requests (500 + 50 tokens each), scaled to another volume."""
    rows = json.loads(USAGE.read_text())
    return [{**r, **{k: round(r[k] * scale) for k in ("requests", "prompt_tokens", "completion_tokens")},
             "cost_usd": r["cost_usd"] * scale} for r in rows]


def _api(group: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in group["apis"] if a["card"] == API)


def test_article_at_100k_per_day_the_api_is_cheaper(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    report = build_report(article_rows(), config, cards, days=30)
    total = report["total"]
    assert total["requests_per_day"] == 100_000
    assert (total["prompt_tokens_per_request"], total["completion_tokens_per_request"]) == (500, 50)
    assert total["spend_per_month_usd"] == pytest.approx(6000.0, abs=1e-6)
    assert _api(total)["cost_per_request_usd"] == pytest.approx(0.002, abs=1e-12)
    assert _api(total)["monthly_usd"] == pytest.approx(6000.0, abs=1e-6)
    (host,) = report["self_hosting"]
    assert host["infra_monthly_usd"] == pytest.approx(1448.64, abs=1e-9)  # the article's "~$1,449"
    assert host["monthly_usd"] == pytest.approx(6448.64, abs=1e-9)  # "~$6,449"
    (be,) = total["break_even"]
    assert (be["api"], be["self_hosting"]) == (API, HOST)
    assert be["requests_per_day"] == pytest.approx(BREAK_EVEN, abs=1e-6)
    assert int(be["requests_per_day"]) == 107_477
    assert total["recommendation"].startswith(
        f"At 100,000 requests/day, {API} via API costs $6,000/month and self-hosting on {HOST} costs "
        f"$6,449/month: stay on the API (cheaper by $449/month); self-hosting wins above 107,477 requests/day.")
    assert report["recommendation"] == total["recommendation"]
    assert report["routes"][0]["route"] == "classify"
    assert report["routes"][0]["deployments"][0]["deployment"] == "gpt-article"


def test_article_at_500k_per_day_self_hosting_wins_about_4x(config: GatewayConfig,
                                                             cards: dict[str, ModelCard]) -> None:
    total = build_report(article_rows(5), config, cards, days=30)["total"]
    assert _api(total)["monthly_usd"] == pytest.approx(30_000.0, abs=1e-6)
    assert _api(total)["monthly_usd"] / SELF_HOSTED == pytest.approx(4.652, abs=1e-3)
    assert total["break_even"][0]["requests_per_day"] == pytest.approx(BREAK_EVEN, abs=1e-6)  # volume-independent
    text = total["recommendation"]
    assert "At 500,000 requests/day" in text and "self-host (cheaper by $23,551/month, 4.65x cheaper)" in text
    assert "the API wins below 107,477 requests/day" in text


def test_article_at_10k_per_day_the_api_wins(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    total = build_report(article_rows(0.1), config, cards, days=30)["total"]
    assert _api(total)["monthly_usd"] == pytest.approx(600.0, abs=1e-6)
    assert "At 10,000 requests/day" in total["recommendation"]
    assert "stay on the API (cheaper by $5,849/month)" in total["recommendation"]


def test_table_shows_the_key_numbers_and_json_round_trips(config: GatewayConfig,
                                                          cards: dict[str, ModelCard]) -> None:
    report = build_report(article_rows(), config, cards, days=30)
    table = render_table(report)
    for needle in ("classify", "gpt-article", "TOTAL", "100,000", "50,000,000", "5,000,000", "$6,000", "$6,449",
                   "$1,449", "$0.002/request", "107,477", "Recommendation: At 100,000 requests/day"):
        assert needle in table, needle
    assert json.loads(json.dumps(report)) == report
    assert orjson.loads(orjson.dumps(report)) == report
    assert report["self_hosting"][0]["monthly_usd"] == pytest.approx(6448.64, abs=1e-9)  # JSON: full precision


def test_no_traffic_says_so(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    report = build_report([], config, cards, days=7)
    assert report["recommendation"] == "No traffic in the last 7 day(s): nothing to compare yet."
    assert report["routes"] == [] and report["total"]["requests_per_day"] == 0
    assert report["total"]["break_even"][0]["requests_per_day"] is None
    assert "No traffic" in render_table(report)


def test_no_alternatives_says_what_to_configure(cards: dict[str, ModelCard]) -> None:
    report = build_report(article_rows(), GatewayConfig(), cards, days=30)
    assert "No alternatives configured" in report["recommendation"]
    assert "cost.compare_with" in report["recommendation"] and "cost.self_hosting" in report["recommendation"]
    assert "$6,000/month" in report["recommendation"]  # the measured spend still shows


def test_unpriced_and_unknown_cards_are_skipped_with_a_note(cards: dict[str, ModelCard]) -> None:
    unpriced = cards[API].model_copy(update={"id": "unpriced", "aliases": [], "pricing": None})
    config = GatewayConfig.model_validate({"cost": {"compare_with": ["unpriced", "nope", API]}})
    report = build_report(article_rows(), config, {**cards, "unpriced": unpriced}, days=30)
    assert [a["card"] for a in report["compare_with"]] == [API]
    assert any("'unpriced' has no pricing" in n for n in report["notes"])
    assert any("no model card 'nope'" in n for n in report["notes"])
    assert "add `cost.self_hosting`" in report["recommendation"]


def test_cache_hits_are_free_under_every_option(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    rows = article_rows() + [{"day": "2025-06-01", "route": "classify", "deployment": "cache", "requests": 300_000,
                              "prompt_tokens": 150_000_000, "completion_tokens": 15_000_000, "cost_usd": 0.0}]
    report = build_report(rows, config, cards, days=30)
    total = report["total"]
    assert total["requests_per_day"] == 110_000 and total["cached_requests_per_day"] == 10_000
    assert _api(total)["monthly_usd"] == pytest.approx(6000.0, abs=1e-6)  # priced on the 100K that reached a model
    assert "At 100,000 requests/day" in total["recommendation"]
    assert "Cache hits (10,000/day) are free either way." in total["recommendation"]
    cache = next(d for d in report["routes"][0]["deployments"] if d["deployment"] == "cache")
    assert cache["recommendation"].startswith("Every request was answered from the cache")


def test_partial_period_and_bad_days(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    report = build_report(article_rows()[:3], config, cards, days=7)
    assert report["total"]["requests_per_day"] == pytest.approx(300_000 / 7)
    assert any("traffic on 3 of 7 days" in n for n in report["notes"])
    with pytest.raises(ValueError):
        build_report([], config, cards, days=0)


@pytest.fixture
def cards_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODEL_CARDS_DIR", str(CARDS_DIR))
    monkeypatch.delenv("LLM_GATEWAY_CONFIG", raising=False)


def test_cli_offline_prints_the_recommendation(cards_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_cost.main(["--usage-file", str(USAGE), "--config", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert "last 30 day(s)" in out and "stay on the API (cheaper by $449/month)" in out and "107,477" in out
    assert cli_cost.main(["--usage-file", str(USAGE), "--config", str(CONFIG), "--days", "7", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["days"] == 7 and report["first_day"] == "2025-06-24"
    assert report["total"]["requests_per_day"] == 100_000


def test_cli_offline_refuses_what_it_cannot_use(cards_env: None, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_cost.main(["--usage-file", str(USAGE)]) == 2
    assert "--usage-file needs --config" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "rows"}')
    with pytest.raises(SystemExit) as exc:
        cli_cost.main(["--usage-file", str(bad), "--config", str(CONFIG)])
    assert exc.value.code == 2 and "expected a JSON list" in capsys.readouterr().err


@pytest.mark.process
def test_cli_subcommand_offline() -> None:
    from gateway.cli import build_parser

    if "cost" not in next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices:
        pytest.skip("needs, in gateway/cli.py build_parser(): "
                    "`from gateway.cli_cost import add_parsers as add_cost_parsers` + `add_cost_parsers(sub)`")
    env = {**os.environ, "LLM_GATEWAY_MODEL_CARDS_DIR": str(CARDS_DIR)}
    env.pop("LLM_GATEWAY_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "gateway", "cost", "--usage-file", str(USAGE),
                           "--config", str(CONFIG)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "stay on the API (cheaper by $449/month); self-hosting wins above 107,477 requests/day" in done.stdout


class FakeUsage:
    """The article's traffic on whichever days are asked for, or a store outage."""

    def __init__(self, down: bool = False) -> None:
        self.down, self.asked = down, []

    async def report_deployments(self, days: list[str]) -> list[dict[str, Any]]:
        if self.down:
            raise StoreUnavailable("store failed: ConnectionError")
        self.asked = days
        return [{**row, "day": day} for row, day in zip(article_rows(), days)]


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, config: GatewayConfig, cards: dict[str, ModelCard]) -> Any:
    monkeypatch.setenv("LLM_GATEWAY_ADMIN_KEY", "adm-test")
    monkeypatch.delenv("REDIS_URL", raising=False)  # an in-process store, never the shared Redis's old counts
    from gateway.app import create_app

    app = create_app(config, cards)
    if "/admin/cost" not in app.openapi()["paths"]:
        pytest.skip("needs, in gateway/app.py: `from gateway.routes import admin_cost` and "
                    "`app.include_router(admin_cost.router)`")
    return app


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                             headers={"Authorization": "Bearer adm-test"})


async def test_admin_cost_endpoint(app: Any) -> None:
    app.state.services.usage = usage = FakeUsage()
    async with _client(app) as client:
        resp = await client.get("/admin/cost", params={"days": 30})
        assert resp.status_code == 200, resp.text
        report = resp.json()
        assert len(usage.asked) == 30 and report["from"] == usage.asked[-1] and report["to"] == usage.asked[0]
        assert _api(report["total"])["monthly_usd"] == pytest.approx(6000.0, abs=1e-6)
        assert report["self_hosting"][0]["monthly_usd"] == pytest.approx(6448.64, abs=1e-9)
        assert "stay on the API" in report["recommendation"]
        assert (await client.get("/admin/cost")).json()["days"] == 7
        assert (await client.get("/admin/cost", params={"days": 9999})).json()["days"] == 400
        assert (await client.get("/admin/cost", params={"days": "x"})).status_code == 400
        assert (await client.get("/admin/cost", headers={"Authorization": "Bearer wrong"})).status_code == 401


async def test_admin_cost_store_down_is_503(app: Any) -> None:
    app.state.services.usage = FakeUsage(down=True)
    async with _client(app) as client:
        resp = await client.get("/admin/cost")  # OpenAI-shaped, like the other admin endpoints
    assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["code"] == "store_unavailable"


async def test_admin_cost_counts_what_the_real_store_recorded(app: Any) -> None:
    usage = app.state.services.usage
    for dep in ("gpt-article", "gpt-article", None):  # None: answered from the cache
        await usage.record(key_id=None, route="classify", prompt_tokens=500, completion_tokens=50,
                           cost_usd=0.0 if dep is None else 0.002, deployment=dep)
    async with _client(app) as client:
        report = (await client.get("/admin/cost", params={"days": 1})).json()
    assert report["total"]["requests"] == 3 and report["total"]["cached_requests_per_day"] == 1
    assert report["total"]["spend_usd"] == pytest.approx(0.004)
    assert _api(report["total"])["cost_per_request_usd"] == pytest.approx(0.002)
