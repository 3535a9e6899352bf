"""README, "Console": the admin console in a real browser (headless Chromium, tests/browser.py) against a real
gateway: the local gemma-3-270m model, a simulated vLLM, real Redis (keys and usage), the master key.

Each scenario is what an admin does with the page: log in (a wrong key refused first; the key kept in the
tab's sessionStorage only, and gone at logout); watch a deployment go unhealthy when its upstream dies and
come back, while the page updates itself; create a key, use it through the openai SDK, revoke it and see the
API refuse it; apply a broken config and read its line-numbered refusal while the API serves on, then apply
a good one; read the break-even chart and table; read usage over one day and export it as CSV; and get
around with the keyboard alone. Every step leaves a screenshot in tests/artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
import redis as redis_sync

from tests import browser as harness
from tests.redis_env import require_redis, unique_prefix
from tests.server import GatewayProcess
from tests.sim import VLLMSim
from tests.waiting import wait_until_async

pytestmark = harness.MARKS

MASTER = "sk-master-console-browser-0000"
MODEL = "gemma-3-270m"
STORE_KEY = "llm-gateway.console.key"  # gateway/console/static/assets/api.js
MSGS = [{"role": "user", "content": "Say hi."}]
HEADER_SECRET = "team-header-value-5c1e"  # an upstream header's value: masked wherever the console shows config
# The route block as yaml.safe_dump writes the config file (GatewayProcess), for the config page's edits.
CPU_ONLY = "- name: cpu-only\n  deployments:\n  - cpu\n"
CHAT = "- name: chat\n  deployments:\n"


def expect(target: Any) -> Any:
    """Playwright's expect, with the harness's timeout (its own default, 5 s, is short for a live page's next
    refresh on a loaded machine); imported here, once the browser fixture found the package."""
    from playwright.async_api import expect as playwright_expect

    playwright_expect.set_options(timeout=harness.TIMEOUT_MS)
    return playwright_expect(target)


class Console:
    """The gateway under test, its simulated upstream and its Redis key prefix."""

    def __init__(self, gw: GatewayProcess, sim: VLLMSim) -> None:
        self.gw, self.sim = gw, sim

    @property
    def root_url(self) -> str:
        return self.gw.root_url

    def sdk(self, key: str = MASTER) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.gw.base_url, api_key=key, max_retries=0, timeout=60)

    async def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as c:
            return await c.request(method, f"{self.gw.root_url}/admin{path}",
                                   headers={"Authorization": f"Bearer {MASTER}"}, **kw)

    async def chat(self, model: str, key: str = MASTER) -> str:
        async with self.sdk(key) as client:
            r = await client.chat.completions.create(model=model, messages=MSGS, max_tokens=4, temperature=0)
        assert r.choices and r.choices[0].message.content is not None, r
        return r.choices[0].message.content


@pytest.fixture(scope="module")
def console() -> Iterator[Console]:
    """One gateway for the module (the model loads once): console on, the master key, keys and usage in real
    Redis under a fresh prefix, quick health checks, and a cost section that gives the chart its lines."""
    url, prefix = require_redis(), unique_prefix()
    sim = VLLMSim("vllm-console").start()
    config = {
        "server": {"console": {"enabled": True}, "watch_config": False},
        "models": [{"card": MODEL, "n_ctx": 1024, "max_queue": 8, "default_max_tokens": 8}],
        "providers": {"gpu": {"kind": "vllm", "base_url": f"{sim.url}/v1", "headers": {"X-Team": HEADER_SECRET}}},
        "deployments": [{"name": "gpu", "provider": "gpu", "model": "vllm-model"},
                        {"name": "cpu", "provider": "local", "model": MODEL}],
        "routes": [{"name": "chat", "deployments": ["gpu", "cpu"]},
                   {"name": "gpu-only", "deployments": ["gpu"]},
                   {"name": "cpu-only", "deployments": ["cpu"]}],
        "health_checks": {"interval_s": 0.5, "timeout_s": 0.5},
        "breaker": {"failure_threshold": 2, "cooldown_s": 1.0, "min_requests": 50},
        "redis": {"url": url, "prefix": prefix},
        "usage": {"flush_interval_s": 0.2},
        "cache": {"enabled": False},  # every request reaches a model (the same prompt would be a cache hit)
        "cost": {"compare_with": ["gpt-4o-mini"], "self_hosting": [
            {"deployment": "gpu", "instance_price_per_hour": 1.006, "instances": 2, "monthly_ops_cost": 5000}]},
    }
    try:
        with GatewayProcess(config, env={"LLM_GATEWAY_MASTER_KEY": MASTER}, ready_timeout=120) as gw:
            yield Console(gw, sim)
    finally:
        sim.stop()
        client = redis_sync.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


async def log_in(page: Any, console: Console, where: str = "") -> None:
    await page.goto(f"{console.root_url}/console{where}")
    await page.get_by_label("Admin or master key").fill(MASTER)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_test_id("session")).to_be_visible()


async def loaded(page: Any, name: str, state: "str | re.Pattern[str]" = "ready") -> Any:
    """The page section, once a load finished in `state`."""
    section = page.get_by_test_id(f"page-{name}")
    await expect(section).to_be_visible()
    await expect(section).to_have_attribute("data-state", state)
    return section


async def over_one_day(page: Any, console: Console, name: str) -> Any:
    """The `name` page (usage or cost), logged in, once loaded again over one day (its Window set to 1)."""
    await log_in(page, console, f"#{name}")
    section = await loaded(page, name)
    loads = await section.get_attribute("data-loads")
    await page.get_by_test_id(f"{name}-window").select_option("1")
    await expect(section).not_to_have_attribute("data-loads", loads)
    await expect(section).to_have_attribute("data-state", "ready")
    return section


async def storage(page: Any) -> dict[str, Any]:
    return await page.evaluate("""() => ({session: window.sessionStorage.getItem('llm-gateway.console.key'),
        sessionKeys: Object.keys(window.sessionStorage), local: window.localStorage.length,
        cookie: document.cookie})""")


def only_failed_loads(problems: list[str], status: int) -> None:
    """Problems that are each the browser's report of a response with `status` (what the page expected)."""
    assert problems and all(f"status of {status}" in p for p in problems), problems


# -- 1. log in ------------------------------------------------------------------------------------------


async def test_log_in_keeps_the_key_in_the_tab_only_and_log_out_forgets_it(page: Any, console: Console) -> None:
    await page.goto(f"{console.root_url}/console")
    key_input = page.get_by_label("Admin or master key")
    await expect(key_input).to_be_focused()
    assert await key_input.get_attribute("type") == "password"
    await harness.shot(page, "1-login")

    await key_input.fill("sk-not-the-key")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_test_id("login-error")).to_have_text("Invalid admin key.")
    await expect(page.get_by_test_id("session")).to_be_hidden()
    only_failed_loads(await harness.take_problems(page), 401)
    assert (await storage(page))["session"] is None
    await harness.shot(page, "2-wrong-key")

    await key_input.fill(MASTER)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_test_id("session")).to_be_visible()
    await loaded(page, "health")
    await expect(page.get_by_test_id("nav-health")).to_have_attribute("aria-current", "page")
    assert await storage(page) == {"session": MASTER, "sessionKeys": [STORE_KEY], "local": 0, "cookie": ""}
    await harness.shot(page, "3-logged-in")

    await page.reload()  # the same tab: still logged in, from sessionStorage
    await loaded(page, "health")

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_test_id("login-error")).to_have_text("Logged out.")
    await expect(page.get_by_test_id("login-page")).to_be_visible()
    await expect(page.get_by_test_id("page-health")).to_be_hidden()
    assert await storage(page) == {"session": None, "sessionKeys": [], "local": 0, "cookie": ""}
    await harness.shot(page, "4-logged-out")
    await page.reload()
    await expect(page.get_by_test_id("login-page")).to_be_visible()


# -- 2. health ------------------------------------------------------------------------------------------


async def test_health_shows_a_dead_upstream_and_its_return_live(page: Any, console: Console) -> None:
    await log_in(page, console)
    health = await loaded(page, "health")
    row = page.get_by_test_id("deployment-row-gpu")
    await expect(row).to_have_attribute("data-healthy", "true")
    await expect(page.get_by_test_id("engine-row-" + MODEL)).to_have_attribute("data-state", "ready")
    await expect(page.get_by_test_id("route-row-chat")).to_have_attribute("data-usable", "2")
    await harness.shot(page, "1-healthy")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    await page.evaluate("() => { window.__sameDocument = true; }")
    loads = int(await health.get_attribute("data-loads"))

    console.sim.stop()
    try:
        await expect(row).to_have_attribute("data-healthy", "false")
        await expect(row.get_by_role("cell", name="unhealthy", exact=True)).to_be_visible()
        await expect(page.get_by_test_id("route-row-chat")).to_have_attribute("data-usable", "1")
        await expect(page.get_by_test_id("announcer")).to_have_text("gpu is unhealthy")
        await harness.shot(page, "2-unhealthy")
    finally:
        console.sim.start()  # the same port
    await expect(row).to_have_attribute("data-healthy", "true")
    await expect(row).to_have_attribute("data-breaker", "closed")
    await expect(row.get_by_role("cell", name="healthy", exact=True)).to_be_visible()
    await expect(page.get_by_test_id("announcer")).to_have_text("gpu is healthy")
    await harness.shot(page, "3-recovered")

    assert int(await health.get_attribute("data-loads")) >= loads + 2, "it refreshed itself"
    assert await page.evaluate("() => window.__sameDocument === true") and navigations == [], navigations


# -- 3. keys --------------------------------------------------------------------------------------------


async def create_key(page: Any, alias: str) -> str:
    await page.get_by_label("Alias").fill(alias)
    await page.get_by_role("button", name="Create key").click()
    panel = page.get_by_test_id("new-key")
    await expect(panel).to_be_visible()
    await expect(panel.get_by_role("heading")).to_have_text(f"New key {alias}")
    await expect(page.locator("#new-key-title")).to_be_focused()
    secret = (await page.get_by_test_id("new-key-secret").inner_text()).strip()
    assert secret.startswith("sk-") and len(secret) > 20, secret
    return secret


async def test_a_key_made_in_the_console_works_until_it_is_revoked_there(page: Any, console: Console) -> None:
    await log_in(page, console, "#keys")
    await expect(page.get_by_test_id("page-keys")).to_have_attribute("data-state", re.compile("ready|empty"))
    alias = f"browser-{uuid.uuid4().hex[:6]}"
    secret = await create_key(page, alias)
    row = page.locator("[data-testid^=key-row-]", has_text=alias)
    await expect(row).to_have_attribute("data-status", "active")
    key_id = await row.get_attribute("data-key-id")
    assert secret not in await row.inner_text(), "the list shows the key's display form, never the secret"
    await harness.shot(page, "1-created")

    assert await console.chat("cpu-only", key=secret)  # the real model, called with the new key

    await page.get_by_role("button", name="Done, hide it").click()
    await expect(page.get_by_test_id("new-key")).to_be_hidden()
    await expect(page.get_by_test_id("new-key-secret")).to_have_text("")
    assert secret not in await page.content()
    await harness.shot(page, "2-secret-hidden")

    await page.get_by_role("button", name=f"Revoke key {alias}").click()
    await expect(row).to_have_attribute("data-status", "revoked")
    await expect(page.get_by_test_id(f"key-revoke-{key_id}")).to_have_count(0)
    await harness.shot(page, "3-revoked")
    with pytest.raises(openai.AuthenticationError):
        await console.chat("cpu-only", key=secret)

    other = await create_key(page, f"{alias}-2")  # leaving the page takes the secret away too
    await page.get_by_role("link", name="Health").click()
    await loaded(page, "health")
    await page.get_by_role("link", name="Keys").click()
    await expect(page.locator("[data-testid^=key-row-]", has_text=f"{alias}-2")).to_be_visible()
    await expect(page.get_by_test_id("new-key")).to_be_hidden()
    assert other not in await page.content()
    await harness.shot(page, "4-left-and-back")


# -- 4. config ------------------------------------------------------------------------------------------


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, (old, text)
    return text.replace(old, new)


async def facts(page: Any) -> dict[str, str]:
    box = page.get_by_test_id("config-facts")
    names = await box.locator("dt").all_inner_texts()
    return dict(zip(names, await box.locator("dd").all_inner_texts()))


async def test_a_broken_config_is_refused_with_its_lines_and_a_good_one_applies(page: Any, console: Console) -> None:
    await log_in(page, console, "#config")
    await loaded(page, "config")
    before = await facts(page)
    version = int(before["Version"])
    assert before["Source"] == str(console.gw.config_path)
    editor = page.get_by_label(re.compile("^Config file \\(YAML\\)"))
    text = await editor.input_value()
    assert "cpu-only" in text and "X-Team: '***'" in text
    await page.get_by_text("Running config, with defaults (secrets masked)").click()
    await expect(page.get_by_test_id("config-running")).to_contain_text('"X-Team": "***"')
    assert HEADER_SECRET not in await page.content()
    await harness.shot(page, "1-loaded")

    broken = edit(text, CPU_ONLY, "- name: cpu-only\n  deployments:\n  - nowhere\n")
    line = broken.splitlines().index("  - nowhere") + 1
    await editor.fill(broken)
    await page.get_by_role("button", name="Validate").click()
    result = page.get_by_test_id("config-result")
    await expect(result).to_have_attribute("data-outcome", "invalid")
    problems = await page.get_by_test_id("config-problems").locator("li").all_inner_texts()
    assert len(problems) == 1 and re.fullmatch(rf".+:{line}: routes\[2\]\.deployments\[0\]: .*'nowhere'.*",
                                               problems[0]), (line, problems)
    await harness.shot(page, "2-invalid")

    serving = asyncio.ensure_future(console.chat("cpu-only"))  # the API serves on while the refusal comes
    await page.get_by_role("button", name="Apply").click()
    await expect(result).to_have_attribute("data-outcome", "refused")
    await expect(result).to_contain_text(f"version {version} keeps serving")
    assert await page.get_by_test_id("config-problems").locator("li").all_inner_texts() == problems
    only_failed_loads(await harness.take_problems(page), 400)
    assert await serving and await console.chat("cpu-only")
    assert (await facts(page))["Version"] == str(version)
    assert await editor.input_value() == broken, "the refused text stays in the editor to be fixed"
    await harness.shot(page, "3-refused")

    alias = f"console-alias-{uuid.uuid4().hex[:6]}"
    await editor.fill(edit(text, CHAT, f"- name: chat\n  aliases:\n  - {alias}\n  deployments:\n"))
    await page.get_by_role("button", name="Validate").click()
    await expect(result).to_have_attribute("data-outcome", "valid")
    await page.get_by_role("button", name="Apply").click()
    await expect(result).to_have_attribute("data-outcome", "applied")
    await expect(result).to_contain_text(f"version {version + 1} is serving")
    await expect(page.get_by_test_id("config-facts").locator("dd").first).to_have_text(str(version + 1))
    async with console.sdk() as client:  # /v1/models lists the route with its new alias
        listed = {m.id: m.model_extra async for m in client.models.list()}
        assert alias in listed["chat"]["aliases"] and (await client.models.retrieve(alias)).id == "chat"
    assert await console.chat(alias)
    written = console.gw.config_path.read_text()
    assert alias in written and HEADER_SECRET in written, "written to the config file, the masked secret kept"
    assert HEADER_SECRET not in await page.content()
    await harness.shot(page, "4-applied")


# -- 5. cost --------------------------------------------------------------------------------------------


async def requests_served(console: Console) -> int:
    return (await console.admin("GET", "/usage?days=1")).json()["totals"]["requests"]


async def test_the_break_even_chart_and_table_show_the_measured_usage(page: Any, console: Console) -> None:
    before = await requests_served(console)
    for model in ("gpu-only", "gpu-only", "cpu-only"):
        await console.chat(model)
    await wait_until_async(lambda: _at_least(console, before + 3), what="the usage counted")

    await over_one_day(page, console, "cost")
    figure = page.get_by_test_id("cost-chart")
    await expect(figure).to_have_attribute("data-state", "ready")
    img = page.get_by_test_id("cost-chart-img")
    assert await img.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    assert "break-even" in (await img.get_attribute("alt")).lower()
    assert (await img.get_attribute("src")).startswith("blob:")
    options = page.get_by_test_id("cost-options").locator("tbody tr")
    assert [await o.get_attribute("data-option") for o in await options.all()] == ["now", "api:gpt-4o-mini",
                                                                                    "self:gpu"]
    rows = page.get_by_test_id("cost-break-even").locator("tbody tr")
    await expect(rows).to_have_count(1)
    assert (await rows.get_attribute("data-api"), await rows.get_attribute("data-self-hosting")) == (
        "gpt-4o-mini", "gpu")
    assert re.fullmatch(r"[\d,]+", (await rows.locator("td").inner_text()).strip()), "a volume, with usage"
    await expect(page.get_by_test_id("cost-recommendation")).not_to_be_empty()
    await harness.shot(page, "1-chart")


async def _at_least(console: Console, n: int) -> bool:
    return await requests_served(console) >= n


# -- 6. usage -------------------------------------------------------------------------------------------


async def test_usage_over_a_day_shows_the_key_and_exports_it(page: Any, console: Console) -> None:
    alias = f"usage-{uuid.uuid4().hex[:6]}"
    made = (await console.admin("POST", "/keys", json={"alias": alias})).json()
    for model in ("gpu-only", "gpu-only", "cpu-only"):
        await console.chat(model, key=made["key"])

    async def counted() -> bool:
        body = (await console.admin("GET", f"/usage?days=1&key_id={made['id']}")).json()
        return body["totals"]["requests"] >= 3

    await wait_until_async(counted, what="the key's usage counted")

    await over_one_day(page, console, "usage")
    for chart in ("chart-requests-per-day", "chart-requests", "chart-tokens", "chart-cost", "chart-errors"):
        await expect(page.get_by_test_id(chart)).to_be_visible()
    group = f"{alias} ({made['id']})"
    bars = page.get_by_test_id("chart-requests").get_by_role("img")  # an SVG with its numbers for a reader
    await expect(bars).to_have_accessible_name(re.compile(f"^Requests by key .*{re.escape(group)}: 3(;|$)"))
    ticks = await page.get_by_test_id("chart-requests-per-day").locator(".tick text").all_text_contents()
    steps = {int(b.replace(",", "")) - int(a.replace(",", "")) for a, b in zip(ticks, ticks[1:])}
    assert ticks[0] == "0" and len(steps) == 1 and steps.pop() >= 1, f"the axis counts in even steps: {ticks}"
    clipped = await page.get_by_test_id("usage-charts").evaluate("""box => [...box.querySelectorAll('.chart-label')]
        .filter((label) => label.getBBox().x < 0).map((label) => label.textContent)""")
    assert clipped == [], "every bar's name fits in its chart, none cut off at the left edge"
    row = page.get_by_test_id("usage-by-group").locator(f"tr[data-group='{group}']")
    await expect(row.locator("td").first).to_have_text("3")
    await harness.shot(page, "1-one-day")

    async with page.expect_download() as info:
        await page.get_by_role("button", name="Export CSV").click()
    download = await info.value
    assert download.suggested_filename == "llm-gateway-usage-by-key-1d.csv"
    text = Path(await download.path()).read_text(encoding="utf-8")
    table = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "day,key_id,key_alias,route,requests,prompt_tokens,completion_tokens,cost_usd"
    mine = {r["route"]: r for r in table if r["key_id"] == made["id"]}
    assert set(mine) == {"gpu-only", "cpu-only"} and mine["gpu-only"]["key_alias"] == alias
    assert (mine["gpu-only"]["requests"], mine["cpu-only"]["requests"]) == ("2", "1")
    assert int(mine["cpu-only"]["completion_tokens"]) > 0


# -- 7. keyboard ----------------------------------------------------------------------------------------


async def focused(page: Any) -> dict[str, str]:
    return await page.evaluate("""() => { const el = document.activeElement;
        return {id: el.id, tag: el.tagName, testid: el.dataset.testid || '', text: el.textContent.trim(),
                outline: getComputedStyle(el).outlineStyle}; }""")


async def test_the_pages_are_reachable_with_the_keyboard_alone(page: Any, console: Console) -> None:
    await page.goto(f"{console.root_url}/console")
    await expect(page.get_by_label("Admin or master key")).to_be_focused()
    await page.keyboard.type(MASTER)
    await page.keyboard.press("Enter")
    await loaded(page, "health")

    seen = []
    for _ in range(8):
        await page.keyboard.press("Tab")
        seen.append((await focused(page))["testid"])
        if seen[-1] == "nav-keys":
            break
    assert seen[-3:] == ["nav-health", "nav-config", "nav-keys"], seen
    await harness.shot(page, "1-nav-focused")
    await page.keyboard.press("Enter")
    await loaded(page, "keys", re.compile("ready|empty"))
    assert page.url.endswith("#keys")
    assert (await focused(page))["id"] == "keys-title", "focus moves to the new page's heading"

    for _ in range(12):  # on to the first button: its focus ring shows
        await page.keyboard.press("Tab")
        now = await focused(page)
        if now["tag"] == "BUTTON":
            break
    assert now["tag"] == "BUTTON" and now["outline"] not in ("none", ""), now
    await harness.shot(page, "2-button-focused")
