"""README, "Console": the admin console as a served gateway gives it, checked over HTTP the way the page's
scripts call it (the browser itself is driven by the Playwright tests).

The page and its assets carry the strict CSP and the other headers, hold no inline script or style, and name
no other host; the config page's calls validate a text with `llm-gateway check`'s line-numbered messages,
refuse a bad text (400, the old config serving on), apply a good one (swapped in and written to the file,
its masked secrets kept), and refuse to apply over a read-only file (409); a change sent from another site is
403; keys are created and revoked as the keys page does it, and a revoked key stops working at once."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from gateway.console.headers import CSP
from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import ROOT, GatewayProcess

pytestmark = pytest.mark.process

MASTER = "sk-master-console-test-0000"
URL_SECRET = "c0ns0le-s3cret"
MSGS = [{"role": "user", "content": "hi"}]
# Places in the config file as the test server writes it (yaml.safe_dump: block style).
CHAT_DEFAULT = "- name: chat-default\n  deployments:\n  - a\n  - b\n"
TEXT_ONLY = "only-in-the-text-7f3a"  # a comment of the applied text: the audit line must never show the text
NEW_ROUTE = f"- name: console-added  # {TEXT_ONLY}\n  deployments:\n  - a\n"


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def console_config(s: Sims, console: bool = True) -> dict[str, Any]:
    cfg = copy.deepcopy(base_config(s))
    cfg["server"]["console"] = {"enabled": console}
    cfg["providers"]["vllm-b"]["base_url"] = f"http://gateway:{URL_SECRET}@127.0.0.1:{s.b.port}/v1"
    cfg["providers"]["vllm-a"]["headers"] = {"X-Team": "console-team-value"}
    return cfg


def start(s: Sims, cfg: dict[str, Any]) -> GatewayProcess:
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "LLM_GATEWAY_MASTER_KEY": MASTER}
    return GatewayProcess(cfg, env=env, require_ready=False, ready_timeout=120)


@pytest.fixture(scope="module")
def gw(sims: Sims) -> Iterator[GatewayProcess]:  # noqa: F811
    sims.reset()
    with start(sims, console_config(sims)) as g:
        yield g
    sims.reset()


class Page:
    """What the console page calls, as its scripts call it: the key as a bearer token, from its own origin."""

    def __init__(self, g: GatewayProcess, key: str = ADMIN_KEY) -> None:
        self.g = g
        self.headers = {"Authorization": f"Bearer {key}", "Origin": g.root_url, "Sec-Fetch-Site": "same-origin"}

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, f"{self.g.root_url}{path}", headers={**self.headers, **kw.pop("headers", {})},
                             timeout=30, **kw)

    def yaml(self, path: str, text: str) -> httpx.Response:
        return self("POST", path, content=text.encode(), headers={"Content-Type": "application/yaml"})

    def config(self) -> dict[str, Any]:
        return self("GET", "/admin/config").json()


def chat(g: GatewayProcess, model: str = "chat-default") -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", json={"model": model, "messages": MSGS},
                      headers={"Authorization": f"Bearer {MASTER}"}, timeout=30)


class Markup(HTMLParser):
    """Every tag with its attributes, and the text inside each <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[tuple[str, str]] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append((self._open, data))


def parsed(html: str) -> Markup:
    m = Markup()
    m.feed(html)
    return m


def code_of(js: str) -> str:
    """A script without its comments (which may well say what it never does)."""
    js = re.sub(r"/\*.*?\*/", "", js, flags=re.S)
    return "\n".join(line for line in js.splitlines() if not line.lstrip().startswith("//"))


def assets_of(g: GatewayProcess, html: str) -> dict[str, httpx.Response]:
    """The page's assets, and every module its scripts import, fetched as a browser would."""
    m = parsed(html)
    todo = [a.get("src") or a.get("href") for t, a in m.tags if t in ("script", "link")]
    seen: dict[str, httpx.Response] = {}
    while todo:
        url = todo.pop()
        assert url and url.startswith("/console/assets/"), url
        if url in seen:
            continue
        seen[url] = r = httpx.get(f"{g.root_url}{url}", timeout=10)
        if url.endswith(".js"):
            todo += ["/console/assets/" + name for name in re.findall(r"from '\./([\w-]+\.js)'", r.text)]
    return seen


def test_off_the_console_is_not_there(sims: Sims) -> None:  # noqa: F811
    with start(sims, console_config(sims, console=False)) as g:
        for path in ("/console", "/console/assets/app.js", "/console/assets/console.css"):
            r = httpx.get(f"{g.root_url}{path}", timeout=10)
            assert r.status_code == 404 and r.json()["error"]["message"].startswith("Unknown request URL"), path
        assert Page(g)("GET", "/admin/deployments").status_code == 200, "the admin API is there all the same"


def test_the_page_and_every_asset_carry_the_csp_and_the_headers(gw: GatewayProcess) -> None:
    page = httpx.get(f"{gw.root_url}/console", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"] == CSP == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assets = assets_of(gw, page.text)
    names = {url.rsplit("/", 1)[1] for url in assets}
    assert {"app.js", "api.js", "dom.js", "charts.js", "health.js", "config.js", "keys.js", "usage.js", "cost.js",
            "console.css"} <= names, names
    for url, r in assets.items():
        assert r.status_code == 200, url
        kind = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8", "svg": "image/svg+xml"}
        assert r.headers["content-type"] == kind[url.rsplit(".", 1)[1]], url
        assert r.headers["content-security-policy"] == CSP and r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["referrer-policy"] == "no-referrer", url


def test_the_page_has_no_inline_script_style_or_handler(gw: GatewayProcess) -> None:
    m = parsed(httpx.get(f"{gw.root_url}/console", timeout=10).text)
    assert m.inline == [], "no script or style written into the page"
    scripts = [a for t, a in m.tags if t == "script"]
    assert scripts and all(a.get("src") and a.get("type") == "module" for a in scripts)
    assert not [t for t, _ in m.tags if t == "style"]
    for tag, attrs in m.tags:
        assert "style" not in attrs, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action"):
            assert not (attrs.get(name) or "").lower().startswith("javascript:"), (tag, attrs)
    # Nor do the scripts make any: no markup from strings, no style attribute, no eval.
    for url, r in assets_of(gw, httpx.get(f"{gw.root_url}/console", timeout=10).text).items():
        if url.endswith(".js"):
            code = code_of(r.text)
            for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                        "'style'", "style:", ".style", "localStorage", "document.cookie", "setAttribute('on"):
                assert bad not in code, (url, bad)


def test_the_assets_name_no_other_host(gw: GatewayProcess) -> None:
    page = httpx.get(f"{gw.root_url}/console", timeout=10).text
    icon = httpx.get(f"{gw.root_url}/console/assets/icon.svg", timeout=10)
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    texts = {"/console": page, "icon.svg": icon.text, **{u: r.text for u, r in assets_of(gw, page).items()}}
    for where, text in texts.items():
        # The one URL-shaped string allowed is SVG's namespace: a name, never fetched.
        urls = set(re.findall(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s'\"`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (where, urls)
        assert "@import" not in text and "url(" not in text, where


def test_validate_gives_the_line_numbered_problems_of_check(gw: GatewayProcess, tmp_path: Path) -> None:
    page = Page(gw)
    shown = page.config()
    text = shown["text"]
    bad = edit(edit(text, CHAT_DEFAULT, CHAT_DEFAULT.replace("- b", "- nowhere")), "watch_interval_s: 0.2",
               "watch_interval_s: -1")
    found = page.yaml("/admin/config/validate", bad)
    assert found.status_code == 200 and found.json()["ok"] is False, found.text
    problems = found.json()["problems"]
    assert len(problems) == 2 and problems[0].startswith(f"{gw.config_path}:2: server.watch_interval_s: "), problems
    assert f"{gw.config_path}:" in problems[1] and "routes[0].deployments[1]: no deployment named 'nowhere'" in \
        problems[1], problems
    # The same lines `llm-gateway check` prints for the same text in a file.
    file = tmp_path / "same.yaml"
    file.write_text(bad)
    env = {**os.environ, "SIM_OPENAI_KEY": "x", "SIM_ANTHROPIC_KEY": "x"}
    check = subprocess.run([sys.executable, "-m", "gateway", "check", str(file)], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, env=env)
    assert check.returncode == 2
    assert [p.replace(str(gw.config_path), str(file)) for p in problems] == check.stderr.strip().splitlines()
    good = page.yaml("/admin/config/validate", text)
    assert good.json() == {"ok": True, "problems": [], "warnings": []}, good.text
    assert page.config()["version"] == shown["version"], "validating applies nothing"
    empty = page.yaml("/admin/config/validate", "")
    assert empty.status_code == 400 and empty.json()["error"]["type"] == "invalid_request_error"
    form = page("POST", "/admin/config/validate", content=b"a=b",
                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"


def test_a_bad_text_is_refused_and_the_old_config_serves_on(gw: GatewayProcess) -> None:
    page = Page(gw)
    before = page.config()
    file_before = gw.config_path.read_text()
    bad = edit(before["text"], CHAT_DEFAULT, CHAT_DEFAULT.replace("- b", "- nowhere"))
    r = page.yaml("/admin/reload", bad)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["ok"] is False and body["version"] == before["version"]
    assert set(body["error"]) == {"message", "type", "param", "code"}, "an OpenAI error too, as every 4xx is"
    assert body["error"]["code"] == "config_invalid" and "no deployment named 'nowhere'" in body["error"]["message"]
    (problem,) = body["problems"]
    assert problem.startswith(f"{gw.config_path}:") and "no deployment named 'nowhere'" in problem, problem
    assert gw.config_path.read_text() == file_before, "the file is untouched"
    assert page.config()["version"] == before["version"] and chat(gw).status_code == 200, "the old config serves"
    assert page("GET", "/admin/deployments").json()["last_reload"]["ok"] is False, "the health page shows it"
    as_before = page("POST", "/admin/reload", json={})  # a JSON body was always ignored: the file is reloaded
    assert as_before.status_code == 200 and as_before.json()["ok"] is True, as_before.text


def test_a_good_text_is_swapped_in_and_written_to_the_file(gw: GatewayProcess) -> None:
    page = Page(gw)
    before = page.config()
    assert URL_SECRET not in before["text"] and "console-team-value" not in before["text"], "masked"
    assert "gateway:***@" in before["text"]
    original = gw.config_path.read_text()
    edited = edit(before["text"], "- name: degraded\n", NEW_ROUTE + "- name: degraded\n")
    try:
        r = page.yaml("/admin/reload", edited)
        assert r.status_code == 200 and r.json()["ok"] is True and r.json()["version"] == before["version"] + 1, r.text
        assert chat(gw, "console-added").status_code == 200, "swapped in"
        written = gw.config_path.read_text()
        assert "console-added" in written and URL_SECRET in written and "console-team-value" in written, \
            "the file holds the edit, and the secrets the masks stood for"
        assert "***" not in written
        assert written == edit(original, "- name: degraded\n", NEW_ROUTE + "- name: degraded\n"), "byte for byte"
        time.sleep(1.0)  # the watcher looks every 0.2 s: it must not take the write for an edit, nor undo it
        assert page.config()["version"] == before["version"] + 1
        assert chat(gw, "console-added").status_code == 200
        assert "console-added" in gw.logs(None) and "sent by the admin key: applied as version" in gw.logs(None)
        assert URL_SECRET not in gw.logs(None) and TEXT_ONLY not in gw.logs(None), "the log never holds the text"
    finally:
        put_back = page.yaml("/admin/reload", masked_again(page))
        assert put_back.status_code == 200 or put_back.json().get("ok"), put_back.text


def masked_again(page: Page) -> str:
    """The config as it was at the start, masked as the console would send it (the route taken out)."""
    text = page.config()["text"]
    return edit(text, NEW_ROUTE, "")


def test_apply_over_a_read_only_file_is_409_and_nothing_changes(gw: GatewayProcess) -> None:
    page = Page(gw)
    before = page.config()
    assert before["writable"] is True and before["read_only_reason"] is None
    gw.config_path.chmod(0o444)
    try:
        shown = page.config()
        assert shown["writable"] is False and "read-only" in shown["read_only_reason"]
        swapped = edit(before["text"], CHAT_DEFAULT, CHAT_DEFAULT.replace("- a\n  - b", "- b\n  - a"))
        r = page.yaml("/admin/reload", swapped)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "config_not_writable" and "read-only" in error["message"]
        assert page.config()["version"] == before["version"]
        assert chat(gw).headers["x-gateway-deployment"] == "a", "the old order serves on"
        assert page("POST", "/admin/reload").status_code == 200, "a reload of the file itself still works"
    finally:
        gw.config_path.chmod(0o644)


def test_a_change_sent_from_another_site_is_403(gw: GatewayProcess) -> None:
    page = Page(gw)
    for headers in ({"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                    {"Origin": "https://evil.example"}, {"Origin": "", "Sec-Fetch-Site": "cross-site"}):
        for method, path, kw in (("POST", "/admin/keys", {"json": {"alias": "evil"}}),
                                 ("POST", "/admin/reload", {}), ("DELETE", "/admin/keys/x", {})):
            r = page(method, path, headers={k: v for k, v in headers.items() if v}, **kw)
            assert r.status_code == 403, (headers, path, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.json()["error"]["code"] == "cross_site_request"
    assert not [k for k in page("GET", "/admin/keys").json()["data"] if k["alias"] == "evil"]
    reads = page("GET", "/admin/keys", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert reads.status_code == 200, "a read is not a change"


def test_keys_are_created_and_revoked_as_the_keys_page_does_it(gw: GatewayProcess) -> None:
    page = Page(gw, key=MASTER)  # the master key logs in too
    created = page("POST", "/admin/keys", json={"alias": "console-made", "rpm": 60, "models": ["chat-default"]})
    assert created.status_code == 201, created.text
    secret, key_id = created.json()["key"], created.json()["id"]
    listed = page("GET", "/admin/keys")
    assert listed.status_code == 200 and secret not in listed.text, "the secret is shown once, at creation"
    row = next(k for k in listed.json()["data"] if k["id"] == key_id)
    assert row["rpm"] == 60 and row["models"] == ["chat-default"] and row["display"].endswith(secret[-4:])
    changed = page("PATCH", f"/admin/keys/{key_id}", json={"rpm": None, "budget_usd": 5.0, "budget_period": "daily"})
    assert changed.status_code == 200 and changed.json()["rpm"] is None and changed.json()["budget_usd"] == 5.0
    as_key = {"Authorization": f"Bearer {secret}"}
    ok = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS},
                    headers=as_key, timeout=30)
    assert ok.status_code == 200, ok.text
    revoked = page("DELETE", f"/admin/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    refused = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS},
                         headers=as_key, timeout=30)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    wrong = Page(gw, key="not-the-admin-key")("GET", "/admin/deployments")
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "Invalid admin key.", \
        "what the login form shows for a wrong key"


def test_the_health_page_has_routes_engines_and_the_last_reload(gw: GatewayProcess,
                                                                sims: Sims) -> None:  # noqa: F811
    body = Page(gw)("GET", "/admin/deployments").json()
    assert body["routes"]["chat-default"]["deployments"] == ["a", "b"]
    assert body["routes"]["chat-default"]["usable_deployments"] == 2
    sims.a.healthy = False  # its health endpoint fails: the next round of checks (every 0.2 s) sees it
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = Page(gw)("GET", "/admin/deployments").json()
            if not body["deployments"]["a"]["healthy"]:
                break
            time.sleep(0.1)
        assert body["deployments"]["a"]["healthy"] is False and body["deployments"]["b"]["healthy"] is True
        assert body["routes"]["chat-default"]["usable_deployments"] == 1
    finally:
        sims.a.healthy = True
    assert {"healthy", "breaker", "in_flight", "ewma_ttft_ms", "successes", "failures"} <= set(body["deployments"]["a"])
    assert body["engines"] == {}, "no local model in this config"
    assert {"ok", "version", "at", "problems"} <= set(body["last_reload"])
    usage = Page(gw)("GET", "/admin/usage?days=1&group_by=deployment")
    assert usage.status_code == 200, usage.text
    assert {r["deployment"] for r in usage.json()["rows"] if r["route"] == "chat-default"} >= {"a"}
    assert all(set(r) == {"day", "route", "deployment", "requests", "prompt_tokens", "completion_tokens", "cost_usd"}
               for r in usage.json()["rows"])
    mixed = Page(gw)("GET", "/admin/usage?group_by=deployment&key_id=abc")
    assert mixed.status_code == 400 and mixed.json()["error"]["param"] == "key_id"
