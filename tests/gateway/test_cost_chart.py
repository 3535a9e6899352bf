"""The cost break-even chart (gateway/cost_series.py, gateway/cost_chart.py): the SVG draws the numbers of the
cost report (gateway/cost.py), reads as the report reads, and says so when there is nothing to draw; the CLI
writes it and GET /admin/cost/chart.svg serves it, to the admin key only, as a document that cannot run script.

The fixture is "The Cost Equation" of tests/gateway/test_cost_report.py: $0.002/request via API against
$6,448.64/month of self-hosting, a break-even at 107,477 requests/day.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from backends.model_cards import ModelCard, load_cards
from gateway.cost import CostLine, api_line, build_report, count, hosting_line, money
from gateway.cost_chart import API_STYLES, HOST_STYLES, render_svg, short, style
from gateway.cost_series import chart_series
from routing.config import GatewayConfig
from routing.config_file import load_config
from tests.gateway.test_cost_report import (
    API,
    BREAK_EVEN,
    CARDS_DIR,
    CONFIG,
    HOST,
    SELF_HOSTED,
    USAGE,
    FakeUsage,
    article_rows,
)
from tests.redis_env import fresh_redis, require_redis, unique_prefix
from tests.server import ROOT, GatewayProcess
from tests.sim import OpenAISim

NS = {"s": "http://www.w3.org/2000/svg"}
ADMIN_KEY = "adm-chart-test"


@pytest.fixture(scope="module")
def cards() -> dict[str, ModelCard]:
    return load_cards(CARDS_DIR)


@pytest.fixture(scope="module")
def config(cards: dict[str, ModelCard]) -> GatewayConfig:
    return load_config(CONFIG, known_cards=set(cards))


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg.encode("utf-8"))  # valid XML, or this raises
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def texts(root: ET.Element, cls: str) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == cls]


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in root.findall("s:g", NS) if g.get("class") == cls]


class Axes:
    """Pixels back to data, from the tick labels the SVG prints and the series' tick values."""

    def __init__(self, root: ET.Element, series: dict[str, Any]) -> None:
        xt = [t for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "x-tick"]
        yt = [t for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == "y-tick"]
        assert [t.text for t in xt] == [short(v) for v in series["x"]]
        assert [t.text for t in yt] == ["$" + short(v) for v in series["y_ticks"]]
        self.x0, self.x1 = float(xt[0].get("x")), float(xt[-1].get("x"))
        self.xmax = series["x"][-1]
        self.y0, self.y1 = float(yt[0].get("y")) - 4, float(yt[-1].get("y")) - 4  # labels sit 4px below the tick
        self.ymax = series["y_ticks"][-1]

    def x(self, px: float) -> float:
        return (px - self.x0) / (self.x1 - self.x0) * self.xmax

    def y(self, px: float) -> float:
        return (px - self.y0) / (self.y1 - self.y0) * self.ymax


def points(group: ET.Element) -> list[tuple[float, float]]:
    poly = group.find("s:polyline", NS)
    return [(float(a), float(b)) for a, b in (p.split(",") for p in poly.get("points").split())]


def article(config: GatewayConfig, cards: dict[str, ModelCard], scale: float = 1.0,
            up_to: float | None = None) -> tuple[dict[str, Any], dict[str, Any], ET.Element]:
    report = build_report(article_rows(scale) if scale else [], config, cards, days=30)
    series = chart_series(report, up_to)
    return report, series, parse(render_svg(series))


# ------------------------------------------------------------------------------------------- the economics


def test_a_cost_line_is_fixed_plus_per_request_and_meets_another_where_they_are_equal() -> None:
    api, host = CostLine("a", "api", 0.0, 0.002, 30), CostLine("h", "self_hosting", SELF_HOSTED, 0.0, 30)
    assert api.monthly_usd(100_000) == pytest.approx(6000.0) and host.monthly_usd(1e9) == SELF_HOSTED
    assert api.break_even(host) == pytest.approx(BREAK_EVEN) == host.break_even(api)
    assert api.break_even(api) is None  # parallel: never meet
    mixed = CostLine("m", "self_hosting", 1000.0, 0.001, 30)  # flat part and a per-request part
    assert mixed.monthly_usd(10_000) == pytest.approx(1300.0)
    assert api.break_even(mixed) == pytest.approx(1000.0 / (0.001 * 30))
    assert CostLine("x", "api", 2000.0, 0.002, 30).break_even(mixed) is None  # above it at every volume >= 0
    assert api_line(API, None, 30) is None


def test_the_report_and_the_chart_read_the_same_lines(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    report, series, _ = article(config, cards)
    total, dpm = report["total"], report["days_per_month"]
    api = api_line(API, total["apis"][0]["cost_per_request_usd"], dpm)
    host = hosting_line(report["self_hosting"][0], dpm)
    assert total["apis"][0]["monthly_usd"] == api.monthly_usd(total["served_requests_per_day"])
    assert total["break_even"][0]["requests_per_day"] == api.break_even(host)
    by_kind = {line["kind"]: line for line in series["lines"]}
    assert by_kind["api"]["y"] == [api.monthly_usd(x) for x in series["x"]]
    assert by_kind["self_hosting"]["y"] == [SELF_HOSTED] * len(series["x"])
    (be,) = series["break_even"]
    assert be == {"api": API, "self_hosting": HOST, "requests_per_day": total["break_even"][0]["requests_per_day"],
                  "monthly_usd": SELF_HOSTED, "in_range": True}
    assert series["x"] == [0, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000]  # around 100K now, 107K even
    assert series["measured"]["requests_per_day"] == 100_000 and series["state"] == "break_even"


# ------------------------------------------------------------------------------------------------ the SVG


def test_the_article_chart_marks_the_break_even_and_todays_volume(config: GatewayConfig,
                                                                  cards: dict[str, ModelCard]) -> None:
    report, series, root = article(config, cards)
    assert root.get("role") == "img" and root.get("aria-labelledby") == "chart-title chart-desc"
    assert root.find("s:title", NS).text == "Cost break-even: API vs self-hosting"
    desc = root.find("s:desc", NS).text
    assert (f"Break-even: {API} via API and self-hosting on {HOST} both cost $6,449/month at 107,477 requests/day; "
            f"below that {API} via API is cheaper, above it self-hosting on {HOST}.") in desc
    assert "Measured volume: 100,000 requests/day (average of the last 30 day(s))" in desc
    assert " ".join(texts(root, "summary")) == " ".join(" ".join(s.split()) for s in series["sentences"])
    axes = Axes(root, series)
    lines = groups(root, "cost-line")
    assert [(g.get("data-kind"), g.get("data-name")) for g in lines] == [("api", API), ("self_hosting", HOST)]
    api_pts, host_pts = points(lines[0]), points(lines[1])
    assert axes.x(api_pts[0][0]) == pytest.approx(0, abs=1) and axes.y(api_pts[0][1]) == pytest.approx(0, abs=1)
    assert axes.x(api_pts[-1][0]) == pytest.approx(150_000, abs=100)
    assert axes.y(api_pts[-1][1]) == pytest.approx(9000, abs=20)  # $0.002 x 150K x 30
    assert {round(axes.y(y)) for _, y in host_pts} == {round(SELF_HOSTED)}
    (marker,) = groups(root, "break-even")
    be = report["total"]["break_even"][0]["requests_per_day"]
    assert float(marker.get("data-requests-per-day")) == be
    assert texts(marker, "break-even-label") == [f"break-even: {count(be)} req/day, {money(SELF_HOSTED)}/month"]
    assert texts(marker, "break-even-label") == ["break-even: 107,477 req/day, $6,449/month"]
    circle = marker.find("s:circle", NS)
    assert axes.x(float(circle.get("cx"))) == pytest.approx(be, abs=100)
    assert axes.y(float(circle.get("cy"))) == pytest.approx(SELF_HOSTED, abs=20)
    (measured,) = groups(root, "measured")
    assert float(measured.get("data-requests-per-day")) == report["total"]["served_requests_per_day"] == 100_000
    assert axes.x(float(measured.find("s:line", NS).get("x1"))) == pytest.approx(100_000, abs=100)
    assert texts(measured, "measured-label") == ["measured: 100,000 req/day"]
    legend = texts(root, "legend-label")
    assert legend[:2] == [f"{API} via API: $0.002/request", f"self-hosting on {HOST}: $6,449/month flat"]
    assert render_svg(series) == render_svg(chart_series(report))  # deterministic


def test_no_usage_says_so_and_still_draws_self_hosting_from_zero(config: GatewayConfig,
                                                                  cards: dict[str, ModelCard]) -> None:
    _, series, root = article(config, cards, scale=0)
    assert root.get("data-state") == "no_usage" == series["state"]
    assert root.find("s:desc", NS).text.startswith("No usage in the last 30 day(s) yet")
    assert texts(root, "summary")[0].startswith("No usage in the last 30 day(s) yet")
    (line,) = groups(root, "cost-line")  # no tokens per request yet: the API cannot be priced
    assert line.get("data-kind") == "self_hosting"
    axes = Axes(root, series)
    pts = points(line)
    assert axes.x(pts[0][0]) == pytest.approx(0, abs=1) and axes.y(pts[0][1]) == pytest.approx(SELF_HOSTED, abs=20)
    assert groups(root, "break-even") == []
    assert any(f"{API} via API: not drawn" in t for t in texts(root, "legend-label"))
    assert texts(root, "measured-label") == ["measured: 0 req/day (no usage yet)"]


def test_no_crossing_in_range_says_which_is_cheaper_up_to_where(config: GatewayConfig,
                                                                cards: dict[str, ModelCard]) -> None:
    _, series, root = article(config, cards, scale=0.001)  # 100 requests/day: the break-even is 1,075x away
    assert series["state"] == "no_crossing" == root.get("data-state") and groups(root, "break-even") == []
    assert series["x"][-1] == 2000  # 20x today
    assert root.find("s:desc", NS).text.startswith(
        f"At every volume up to 2,000 requests/day, {API} via API is cheaper than self-hosting on {HOST} "
        f"(break-even at 107,477 requests/day, beyond this chart).")
    assert texts(root, "measured-label") == ["measured: 100 req/day"]
    _, series, root = article(config, cards, up_to=50_000)  # today (100K) past the end of a narrower chart
    assert series["state"] == "no_crossing" and series["x"][-1] == 50_000 and groups(root, "measured") == []
    assert "beyond this chart (up to 50,000 requests/day)" in root.find("s:desc", NS).text


def test_free_self_hosting_is_cheaper_at_every_volume(cards: dict[str, ModelCard]) -> None:
    config = load_config(CONFIG, known_cards=set(cards)).model_copy(deep=True)
    config.cost.self_hosting[0].instance_price_per_hour = 0.0
    config.cost.self_hosting[0].monthly_ops_cost = 0.0
    _, series, root = article(config, cards)
    assert series["state"] == "no_crossing"
    assert root.find("s:desc", NS).text.startswith(
        f"At every volume up to 120,000 requests/day, self-hosting on {HOST} is cheaper than {API} via API.")


def test_no_self_hosting_options_is_a_message_image(cards: dict[str, ModelCard]) -> None:
    config = GatewayConfig.model_validate({"cost": {"compare_with": [API]}})
    series = chart_series(build_report(article_rows(), config, cards, days=30))
    root = parse(render_svg(series))
    assert root.get("data-state") == "no_self_hosting" and groups(root, "cost-line") == []
    assert root.find("s:desc", NS).text.startswith("No self-hosting options configured: add `cost.self_hosting:")
    assert texts(root, "summary")[0].startswith("No self-hosting options configured")


def test_several_break_evens_are_numbered_and_listed() -> None:
    """Two APIs against two self-hosting options: four lines, a marker per crossing on the chart, each with a
    number beside it and its words in the legend (four labels beside the points would overlap)."""
    cards = load_cards()  # the shipped cards: two priced provider models
    config = GatewayConfig.model_validate({
        "providers": {"v": {"kind": "vllm", "base_url": "http://127.0.0.1:1/v1"}},
        "deployments": [{"name": "qwen-gpu", "provider": "v", "model": "m"},
                        {"name": "llama-a100", "provider": "v", "model": "m"}],
        "routes": [{"name": "classify", "deployments": ["qwen-gpu"]}],
        "cost": {"compare_with": ["gpt-4o-mini", "claude-haiku-4-5"], "self_hosting": [
            {"deployment": "qwen-gpu", "instance_price_per_hour": 1.006, "instances": 2, "monthly_ops_cost": 5000},
            {"deployment": "llama-a100", "instance_price_per_hour": 3.5, "monthly_ops_cost": 2000}]}})
    report = build_report(article_rows(), config, cards, days=30)
    series = chart_series(report)
    root = parse(render_svg(series))
    assert [g.get("data-kind") for g in groups(root, "cost-line")] == ["api", "api", "self_hosting", "self_hosting"]
    shown = [b for b in series["break_even"] if b["in_range"]]
    assert len(shown) >= 2 and len(series["break_even"]) == 4
    markers = groups(root, "break-even")
    assert [float(g.get("data-requests-per-day")) for g in markers] == [b["requests_per_day"] for b in shown]
    assert [texts(g, "break-even-number") for g in markers] == [[str(i)] for i in range(1, len(shown) + 1)]
    assert texts(root, "break-even-label") == [
        f"({i}) {b['api']} via API = self-hosting on {b['self_hosting']}: {count(b['requests_per_day'])} req/day, "
        f"{money(b['monthly_usd'])}/month" for i, b in enumerate(shown, 1)]
    assert all(b["requests_per_day"] == r["requests_per_day"]
               for b, r in zip(series["break_even"], report["total"]["break_even"]))


def test_names_are_escaped_and_the_output_stays_xml(config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    _, series, _ = article(config, cards)
    hostile = '<script>alert(1)</script>&"\x01'
    for line in series["lines"]:
        line["name"] = hostile
    svg = render_svg(series)
    root = parse(svg)
    assert "<script" not in svg and not list(root.iter("{http://www.w3.org/2000/svg}script"))
    assert [g.get("data-name") for g in groups(root, "cost-line")] == ['<script>alert(1)</script>&"\ufffd'] * 2
    assert f"{hostile[:-1]}\ufffd via API: $0.002/request" in texts(root, "legend-label")


def _luminance(hex_colour: str) -> float:
    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def test_every_line_has_its_own_dash_and_enough_contrast() -> None:
    firsts = [style("api", i) for i in range(len(API_STYLES))] + [style("self_hosting", i)
                                                                  for i in range(len(HOST_STYLES))]
    assert len({dash for _, dash in firsts}) == len(firsts), "not colour alone: each line its own dash"
    for colour, _ in firsts:
        assert (1.05 / (_luminance(colour) + 0.05)) >= 4.5, colour  # WCAG contrast against white
    more = [style("api", i) for i in range(2 * len(API_STYLES))]
    assert len(set(more)) == len(more)


# ------------------------------------------------------------------------------------------------ the CLI


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLM_GATEWAY_MODEL_CARDS_DIR": str(CARDS_DIR), "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    env.pop("LLM_GATEWAY_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "gateway", "cost", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.process
def test_cli_writes_the_chart_offline(tmp_path: Path, config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    out = tmp_path / "out.svg"
    done = cli("--config", str(CONFIG), "--usage-file", str(USAGE), "--chart", str(out))
    assert done.returncode == 0, done.stderr
    assert "self-hosting wins above 107,477 requests/day" in done.stdout  # the report still prints
    root = parse(out.read_text(encoding="utf-8"))
    assert texts(root, "break-even-label") == ["break-even: 107,477 req/day, $6,449/month"]
    assert out.read_text(encoding="utf-8") == render_svg(chart_series(build_report(article_rows(), config, cards, 30)))
    to_stdout = cli("--config", str(CONFIG), "--usage-file", str(USAGE), "--chart", "-", "--up-to", "50000")
    assert to_stdout.returncode == 0, to_stdout.stderr
    assert parse(to_stdout.stdout).get("data-state") == "no_crossing"  # stdout is the SVG and nothing else
    png = cli("--config", str(CONFIG), "--usage-file", str(USAGE), "--chart", str(tmp_path / "out.png"))
    assert png.returncode == 2 and "SVG only" in png.stderr and not (tmp_path / "out.png").exists()


# ------------------------------------------------------------------------------------------- the endpoint


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, config: GatewayConfig, cards: dict[str, ModelCard]) -> Any:
    monkeypatch.setenv("LLM_GATEWAY_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("REDIS_URL", raising=False)
    from gateway.app import create_app

    return create_app(config, cards)


def _client(app: Any, key: str | None = ADMIN_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                             headers={"Authorization": f"Bearer {key}"} if key else {})


def assert_svg_answer(resp: httpx.Response) -> ET.Element:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/svg+xml"
    assert resp.headers["content-security-policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert resp.headers["x-content-type-options"] == "nosniff"
    return parse(resp.text)


async def test_the_endpoint_serves_the_reports_chart_and_the_json_its_numbers(app: Any) -> None:
    app.state.services.usage = FakeUsage()
    async with _client(app) as client:
        root = assert_svg_answer(await client.get("/admin/cost/chart.svg", params={"days": 30}))
        report = (await client.get("/admin/cost", params={"days": 30})).json()
        narrow = assert_svg_answer(await client.get("/admin/cost/chart.svg", params={"days": 30, "up_to": 50000}))
        bad = await client.get("/admin/cost/chart.svg", params={"up_to": "lots"})
        zero = await client.get("/admin/cost", params={"up_to": "0"})
    assert texts(root, "break-even-label") == ["break-even: 107,477 req/day, $6,449/month"]
    chart = report["chart"]
    assert chart["break_even"][0]["requests_per_day"] == report["total"]["break_even"][0]["requests_per_day"]
    assert float(groups(root, "break-even")[0].get("data-requests-per-day")) == chart["break_even"][0][
        "requests_per_day"]
    assert [ln["name"] for ln in chart["lines"]] == [API, HOST] and len(chart["lines"][0]["y"]) == len(chart["x"])
    assert chart["measured"]["requests_per_day"] == 100_000
    assert narrow.get("data-state") == "no_crossing"
    for resp in (bad, zero):
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "up_to"


async def test_the_chart_is_for_the_admin_key_only(app: Any, monkeypatch: pytest.MonkeyPatch,
                                                   config: GatewayConfig, cards: dict[str, ModelCard]) -> None:
    app.state.services.usage = FakeUsage()
    for key in (None, "wrong"):
        async with _client(app, key) as client:
            resp = await client.get("/admin/cost/chart.svg")
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        assert "svg" not in resp.headers["content-type"]
    monkeypatch.delenv("LLM_GATEWAY_ADMIN_KEY")
    monkeypatch.delenv("LLM_GATEWAY_MASTER_KEY", raising=False)
    from gateway.app import create_app

    async with _client(create_app(config, cards)) as client:
        resp = await client.get("/admin/cost/chart.svg")
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_disabled"


@pytest.mark.process
async def test_a_served_gateway_charts_the_traffic_it_counted(config: GatewayConfig, tmp_path: Path) -> None:
    """Real traffic through a real gateway (paid upstream simulated) into real Redis, then the chart over HTTP,
    and the CLI against that gateway writes the same bytes."""
    sim = OpenAISim("gpt", api_key="sk-sim-chart").start()
    raw = yaml.safe_load(CONFIG.read_text())
    raw["providers"]["openai"]["base_url"] = f"{sim.url}/v1"  # its key stays ${OPENAI_API_KEY}
    prefix, counted = unique_prefix(), []
    raw["redis"] = {"url": require_redis(), "prefix": prefix}
    raw["usage"] = {"flush_interval_s": 0.1}
    env = {"LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "LLM_GATEWAY_MODEL_CARDS_DIR": str(CARDS_DIR),
           "OPENAI_API_KEY": "sk-sim-chart"}
    try:
        with GatewayProcess(raw, env=env, ready_timeout=60) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)
            for i in range(3):
                client.chat.completions.create(model="classify", messages=[{"role": "user", "content": f"hi {i}"}])
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            deadline = time.monotonic() + 20
            while True:
                report = httpx.get(f"{gw.root_url}/admin/cost", params={"days": 1}, headers=admin, timeout=10).json()
                if report["total"]["requests"] == 3 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert report["total"]["requests"] == 3
            resp = httpx.get(f"{gw.root_url}/admin/cost/chart.svg", params={"days": 1}, headers=admin, timeout=10)
            root = assert_svg_answer(resp)
            for headers in ({}, {"Authorization": "Bearer not-the-admin-key"}):
                denied = httpx.get(f"{gw.root_url}/admin/cost/chart.svg", headers=headers, timeout=10)
                assert denied.status_code == 401 and "<svg" not in denied.text
            out = tmp_path / "online.svg"
            done = cli("--url", gw.root_url, "--days", "1", "--chart", str(out))
            assert done.returncode == 0, done.stderr
            narrow = httpx.get(f"{gw.root_url}/admin/cost/chart.svg", params={"days": 1, "up_to": 10},
                               headers=admin, timeout=10).text
            to_stdout = cli("--url", gw.root_url, "--days", "1", "--up-to", "10", "--chart", "-")
            assert to_stdout.returncode == 0, to_stdout.stderr
    finally:
        sim.stop()
        async with fresh_redis() as (redis, _):
            counted = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            if counted:
                await redis.delete(*counted)
    assert any(b"usage" in k for k in counted), counted  # the counts went through the shared store
    chart = report["chart"]
    assert chart["measured"]["requests_per_day"] == 3
    assert float(groups(root, "measured")[0].get("data-requests-per-day")) == 3
    assert texts(root, "measured-label") == ["measured: 3 req/day"]
    be = report["total"]["break_even"][0]["requests_per_day"]  # millions: far beyond 3/day
    assert chart["state"] == "no_crossing" and root.get("data-state") == "no_crossing"
    assert f"(break-even at {count(be)} requests/day, beyond this chart)" in root.find("s:desc", NS).text
    assert out.read_text(encoding="utf-8") == resp.text  # the CLI draws the gateway's numbers, byte for byte
    assert to_stdout.stdout == narrow and texts(parse(narrow), "x-tick")[-1] == "10"
