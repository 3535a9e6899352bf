"""The admin API's second line against cross-site requests (gateway/cross_site.py): a change a browser says
comes from another site is refused; reads, the gateway's own page, and callers that are not browsers go on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.datastructures import Headers

from backends.model_cards import load_cards
from gateway.app import create_app
from gateway.cross_site import cross_site_refusal
from gateway.settings import Settings
from routing.config import CorsConfig, GatewayConfig

MASTER = "sk-master-cross-site-000"
CORS = CorsConfig(allow_origins=["https://portal.example"], allow_origin_regex=r"^https://[a-z]+\.corp\.example$")


def refused(method: str, cors: CorsConfig | None = None, **headers: str) -> str | None:
    found = cross_site_refusal(method, Headers({k.replace("_", "-"): v for k, v in headers.items()}), cors)
    assert found is None or (found.status_code, found.error_type, found.code) == (403, "permission_error",
                                                                                 "cross_site_request")
    return None if found is None else found.message


@pytest.mark.parametrize("origin, host", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000"), ("https://gw.example", "gw.example"),
    ("https://gw.example", "gw.example:443"), ("http://gw.example:80", "gw.example"),
    ("http://[::1]:8000", "[::1]:8000"), ("HTTPS://GW.Example", "gw.example"),
])
def test_the_gateways_own_origin_may_change_things(origin: str, host: str) -> None:
    assert refused("POST", origin=origin, host=host, sec_fetch_site="same-origin") is None


@pytest.mark.parametrize("headers", [
    {"origin": "https://evil.example", "host": "gw.example"},
    {"origin": "http://gw.example:8001", "host": "gw.example:8000"},  # another port is another origin
    {"origin": "null", "host": "gw.example"},  # a sandboxed frame, a file: page
    {"sec_fetch_site": "cross-site", "host": "gw.example"},  # no Origin, but the browser says so
    {"origin": "https://gw.example", "host": "gw.example", "sec_fetch_site": "cross-site"},
])
@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT", "DELETE"])
def test_a_change_from_another_site_is_refused(method: str, headers: dict[str, str]) -> None:
    assert refused(method, **headers) is not None


def test_reads_and_non_browsers_and_trusted_cors_origins_go_on() -> None:
    assert refused("GET", origin="https://evil.example", host="gw.example", sec_fetch_site="cross-site") is None
    assert refused("HEAD", origin="https://evil.example", host="gw.example") is None
    assert refused("POST", host="gw.example") is None, "the CLI, curl, an SDK: no Origin, no Sec-Fetch-Site"
    assert refused("POST", host="gw.example", sec_fetch_site="none") is None, "typed into the address bar"
    assert refused("POST", host="gw.example", sec_fetch_site="same-site") is None
    # Behind a proxy that rewrites Host, the browser's origin is the one it forwarded.
    assert refused("POST", origin="https://gw.example", host="10.0.0.7:8000", x_forwarded_host="gw.example") is None
    # server.cors origins, by name or by its regular expression, are the operator's own pages; '*' is not.
    trusted = {"origin": "https://portal.example", "host": "gw.example", "sec_fetch_site": "cross-site"}
    assert refused("POST", CORS, **trusted) is None
    assert refused("DELETE", CORS, origin="https://ops.corp.example", host="gw.example") is None
    assert refused("POST", CORS, origin="https://evil.example", host="gw.example") is not None
    assert refused("POST", CorsConfig(allow_origins=["*"]), origin="https://evil.example", host="gw") is not None


def app(cors: dict[str, Any] | None = None) -> Any:
    config = GatewayConfig.model_validate({"models": [], "server": {"cors": cors} if cors else {}})
    return create_app(config, load_cards(), settings=Settings(master_key=MASTER))


async def test_the_admin_api_answers_403_in_openais_shape_before_anything_changes() -> None:
    auth = {"Authorization": f"Bearer {MASTER}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app()), base_url="http://127.0.0.1:8000") as c:
        evil = {**auth, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
        for method, path, body in (("POST", "/admin/keys", {"alias": "x"}), ("POST", "/admin/reload", None),
                                   ("PATCH", "/admin/keys/abc", {"rpm": 1}), ("DELETE", "/admin/keys/abc", None),
                                   ("POST", "/admin/config/validate", None)):
            r = await c.request(method, path, json=body, headers=evil)
            assert r.status_code == 403, (method, path, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert r.json()["error"]["code"] == "cross_site_request"
        assert (await c.get("/admin/keys", headers=auth)).json()["data"] == [], "nothing was created"
        assert (await c.get("/admin/keys", headers=evil)).status_code == 200, "reads are not refused"
        own = {**auth, "Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        assert (await c.post("/admin/keys", json={"alias": "ok"}, headers=own)).status_code == 201
        no_key = await c.post("/admin/keys", json={"alias": "x"}, headers={"Origin": "https://evil.example"})
        assert no_key.status_code == 403, "refused before the key is even looked at"
