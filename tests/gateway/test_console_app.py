"""The console's routes in the app (no server process): there only when `server.console.enabled`, under the
gateway's exposure rules like every other path, revalidated by ETag, and right behind a path prefix."""

from __future__ import annotations

from typing import Any

import httpx

from backends.model_cards import load_cards
from gateway.app import create_app
from gateway.console.headers import CSP
from gateway.settings import Settings
from routing.config import GatewayConfig

ADMIN = "admin-console-app-key"


def app(console: bool, **settings: Any) -> Any:
    config = GatewayConfig.model_validate({"models": [], "server": {"console": {"enabled": console}}})
    return create_app(config, load_cards(), settings=Settings(**settings))


def client(a: Any, host: str = "127.0.0.1:8000", root_path: str = "") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=a, root_path=root_path), base_url=f"http://{host}")


async def test_off_there_is_no_route_at_all() -> None:
    a = app(False, admin_key=ADMIN)
    assert not [r for r in a.routes if getattr(r, "path", "").startswith("/console")]
    async with client(a) as c:
        for path in ("/console", "/console/assets/app.js"):
            r = await c.get(path)
            assert r.status_code == 404 and "content-security-policy" not in r.headers, path
    assert GatewayConfig().server.console.enabled is False, "off by default"


async def test_keyless_it_serves_loopback_names_and_refuses_other_hosts() -> None:
    """With no master key the exposure rules hold (DNS rebinding): the console is one more path under them."""
    a = app(True, admin_key=ADMIN)
    async with client(a) as c:
        r = await c.get("/console")
        assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
    async with client(a, "localhost:8000") as c:
        assert (await c.get("/console/assets/app.js")).status_code == 200
    async with client(a, "rebound.evil.example") as c:
        for path in ("/console", "/console/assets/app.js"):
            r = await c.get(path)
            assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed", path


async def test_assets_are_revalidated_by_their_etag() -> None:
    async with client(app(True, master_key="sk-master-console-app")) as c:
        first = await c.get("/console/assets/console.css")
        assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
        again = await c.get("/console/assets/console.css", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["content-security-policy"] == CSP
        for name in ("index.html", "nope.js", "..%2F..%2Froutes.py"):  # only the files of static/assets
            missing = await c.get(f"/console/assets/{name}")
            assert missing.status_code == 404 and "error" in missing.json(), name


async def test_behind_a_path_prefix_the_page_names_its_assets_under_it() -> None:
    async with client(app(True, master_key="sk-master-console-app"), root_path="/gw") as c:
        page = (await c.get("/console")).text
    assert 'src="/gw/console/assets/app.js"' in page and 'href="/gw/console/assets/console.css"' in page
    assert "{{root}}" not in page
