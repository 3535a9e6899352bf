"""README, "Browser clients (CORS)": `server.cors` off by default (no CORS layer in the stack at all); on, a
preflight is answered before authentication and rate limits, allowed origins get their headers on every
answer (errors included), other origins get none; a bad `cors` section is refused with its line."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from backends.model_cards import load_cards
from gateway.app import create_app
from gateway.cors import GatewayCORS
from gateway.middleware import RequestContextMiddleware
from gateway.settings import Settings
from routing.config import GATEWAY_RESPONSE_HEADERS, ConfigError, GatewayConfig
from routing.config_file import parse_config
from routing.manager import RuntimeManager
from tests.routing_env import Sims, sims  # noqa: F401  (fixture)
from tests.server import GatewayProcess

MASTER = "sk-master-cors-test-00000"
PAGE = "https://app.example.com"
# What openai-node and anthropic-sdk-typescript ask for in a browser (dangerouslyAllowBrowser: true).
OPENAI_NODE = ("authorization, content-type, openai-organization, openai-project, x-stainless-arch, "
               "x-stainless-lang, x-stainless-os, x-stainless-package-version, x-stainless-retry-count, "
               "x-stainless-runtime, x-stainless-runtime-version, x-stainless-timeout")
ANTHROPIC_TS = ("anthropic-dangerous-direct-browser-access, anthropic-version, content-type, x-api-key, "
                "x-stainless-arch, x-stainless-helper-method, x-stainless-lang, x-stainless-os, "
                "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
                "x-stainless-runtime-version, x-stainless-timeout")
CHAT = {"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}


def app_with(server: dict[str, Any] | None = None, master: str | None = MASTER) -> Any:
    config = GatewayConfig.model_validate({"models": [], "server": server or {}})
    return create_app(config, load_cards(), settings=Settings(master_key=master))


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def preflight(origin: str, method: str = "POST", headers: str = OPENAI_NODE) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


def assert_openai_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and set(r.json()["error"]) == {"message", "type", "param", "code"}


async def test_off_by_default_there_is_no_cors_layer_and_no_cors_header() -> None:
    app = app_with()
    assert app.server_config.cors is None
    assert type(app.build_middleware_stack()) is RequestContextMiddleware, "no CORS code runs when it is off"
    async with client(app) as c:
        r = await c.options("/v1/chat/completions", headers=preflight(PAGE))
        assert_openai_error(r, 405, "method_not_allowed")  # as before: the preflight is not answered
        assert not cors_headers(r)
        r = await c.post("/v1/chat/completions", json=CHAT,
                         headers={"Origin": PAGE, "Authorization": f"Bearer {MASTER}"})
        assert_openai_error(r, 404, "model_not_found")
        assert not cors_headers(r) and "x-request-id" in r.headers


@pytest.mark.parametrize("path, method, asked", [
    ("/v1/chat/completions", "POST", OPENAI_NODE), ("/v1/completions", "POST", ANTHROPIC_TS),
    ("/v1/models", "GET", OPENAI_NODE), ("/admin/keys", "POST", "authorization, content-type"),
])
async def test_a_preflight_is_answered_without_a_key(path: str, method: str, asked: str) -> None:
    app = app_with({"cors": {"allow_origins": [PAGE], "max_age": 1200}})
    assert isinstance(app.build_middleware_stack(), GatewayCORS)
    async with client(app) as c:
        r = await c.options(path, headers=preflight(PAGE, method, asked))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == PAGE
    assert method in r.headers["access-control-allow-methods"].split(", ")
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in asked.split(",")} <= allowed, allowed
    assert r.headers["access-control-max-age"] == "1200"
    assert "access-control-allow-credentials" not in r.headers
    assert "x-request-id" not in r.headers, "answered before the gateway's own stack: no request was made"


async def test_an_allowed_origin_reads_answers_and_errors_and_the_gateways_headers() -> None:
    app = app_with({"cors": {"allow_origins": [PAGE, "http://localhost:5173"]}, "max_body_bytes": 2048})
    async with client(app) as c:
        ok = await c.get("/v1/models", headers={"Origin": PAGE, "Authorization": f"Bearer {MASTER}"})
        no_key = await c.get("/v1/models", headers={"Origin": "http://localhost:5173"})
        too_big = await c.post("/v1/chat/completions", content=b"x" * 4096,
                               headers={"Origin": PAGE, "Content-Type": "application/json"})
    assert ok.status_code == 200 and ok.json()["object"] == "list"
    assert_openai_error(no_key, 401, "invalid_api_key")
    assert_openai_error(too_big, 413, "request_too_large")  # the request-context layer's own answer
    for r, origin in ((ok, PAGE), (no_key, "http://localhost:5173"), (too_big, PAGE)):
        assert r.headers["access-control-allow-origin"] == origin, r.headers
        assert "Origin" in r.headers["vary"]
        exposed = r.headers["access-control-expose-headers"].split(", ")
        assert set(GATEWAY_RESPONSE_HEADERS) <= set(exposed)
        assert {"x-request-id", "x-gateway-deployment", "retry-after", "x-ratelimit-remaining-requests"} <= set(exposed)


async def test_an_origin_not_listed_gets_no_cors_header_at_all() -> None:
    app = app_with({"cors": {"allow_origins": [PAGE]}})
    async with client(app) as c:
        refused = await c.options("/v1/chat/completions", headers=preflight("https://evil.example"))
        odd_header = await c.options("/v1/chat/completions", headers=preflight(PAGE, headers="x-not-allowed"))
        plain = await c.get("/v1/models",
                            headers={"Origin": "https://evil.example", "Authorization": f"Bearer {MASTER}"})
        no_origin = await c.get("/v1/models", headers={"Authorization": f"Bearer {MASTER}"})
    assert_openai_error(refused, 400, "cors_not_allowed")
    assert "origin" in refused.json()["error"]["message"]
    assert_openai_error(odd_header, 400, "cors_not_allowed")
    assert "headers" in odd_header.json()["error"]["message"]
    for r in (refused, odd_header, plain, no_origin):
        assert not cors_headers(r), r.headers
    assert plain.status_code == 200 and "Origin" in plain.headers["vary"], "a cache must keep the two apart"


async def test_any_origin_without_credentials_and_listed_origins_with_them() -> None:
    anyone = app_with({"cors": {"allow_origins": ["*"]}})
    creds = app_with({"cors": {"allow_origins": [PAGE], "allow_credentials": True}})
    pattern = app_with({"cors": {"allow_origin_regex": r"^https://[a-z0-9-]+\.example\.org$"}})
    async with client(anyone) as c:
        r = await c.get("/v1/models", headers={"Origin": "https://whoever.test", "Authorization": f"Bearer {MASTER}"})
        assert r.headers["access-control-allow-origin"] == "*" and "access-control-allow-credentials" not in r.headers
    async with client(creds) as c:
        p = await c.options("/v1/models", headers=preflight(PAGE, "GET"))
        r = await c.get("/v1/models", headers={"Origin": PAGE, "Authorization": f"Bearer {MASTER}"})
        for answer in (p, r):
            assert answer.headers["access-control-allow-origin"] == PAGE
            assert answer.headers["access-control-allow-credentials"] == "true"
    async with client(pattern) as c:
        good = await c.options("/v1/models", headers=preflight("https://team-a.example.org", "GET"))
        bad = await c.options("/v1/models", headers=preflight("https://team-a.example.org.evil.test", "GET"))
        assert good.status_code == 200 and good.headers["access-control-allow-origin"] == "https://team-a.example.org"
        assert bad.status_code == 400 and not cors_headers(bad)


@pytest.mark.parametrize("yaml_text, line, words", [
    ("server:\n  port: 8000\n  cors:\n    allow_origins: ['*']\n    allow_credentials: true\n", 5,
     "allow_credentials: true cannot go with allow_origins ['*']"),
    ("server:\n  cors:\n    allow_origins:\n      - https://ok.example\n      - https://app.example.com/\n", 5,
     "is not an origin"),
    ("server:\n  cors:\n    allow_origins: ['*', 'https://app.example.com']\n", 3, "list no others beside it"),
    ("server:\n  cors: {}\n", 2, "to turn CORS off, remove 'cors'"),
    ("server:\n  cors:\n    allow_origins: [https://a.example]\n    allow_methods: ['GET POST']\n", 4,
     "not an HTTP method or header name"),
    ("server:\n  cors:\n    allow_origin_regex: '(unclosed'\n", 3, "not a regular expression"),
    ("server:\n  cors:\n    allow_origins: [https://a.example]\n    max_age: -1\n", 4, "greater than or equal to 0"),
    ("server:\n  cors:\n    allow_origins: [https://a.example]\n    allow_origin: x\n", 4, "Extra inputs"),
])
def test_a_bad_cors_section_is_refused_with_its_line(yaml_text: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(yaml_text, "gateway.yaml")
    first = exc.value.problems[0]
    assert first.startswith(f"gateway.yaml:{line}: server.cors"), exc.value.problems
    assert words in first, first


async def test_a_reload_that_changes_cors_applies_the_rest_and_says_cors_waits_for_a_restart() -> None:
    cards = load_cards()
    text = "models: []\nserver:\n  port: 8000\n"
    manager = RuntimeManager(parse_config(text, known_cards=set(cards)), cards)
    try:
        result = await manager.reload(text + "  cors:\n    allow_origins: [https://a.example]\n  docs: true\n")
        assert result["ok"] and result["version"] == 2
        assert result["restart_needed"] == ["server.cors", "server.docs"]
        again = await manager.reload(text)  # back to what is serving: nothing waits
        assert again["ok"] and "restart_needed" not in again
    finally:
        await manager.aclose()


# -- a real gateway: preflights are no requests (rate limits, metrics) -------------------------------------

@pytest.fixture
def cors_gw(sims: Sims) -> Iterator[GatewayProcess]:  # noqa: F811
    sims.reset()
    cfg = {
        "server": {"cors": {"allow_origins": [PAGE]}},
        "models": [],
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [{"name": "limited", "deployments": ["a"], "rate_limit": {"rpm": 2}, "cache": {"enabled": False}}],
    }
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        yield g
    sims.reset()


@pytest.mark.process
def test_preflights_are_not_requests_and_a_page_reads_the_gateways_headers(cors_gw: GatewayProcess,
                                                                           sims: Sims) -> None:  # noqa: F811
    g = cors_gw
    with httpx.Client(base_url=g.root_url, timeout=30) as http:
        for _ in range(5):  # more preflights than the route's RPM
            r = http.options("/v1/chat/completions", headers=preflight(PAGE))
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == PAGE, r.text
        body = {"model": "limited", "messages": [{"role": "user", "content": "from a page"}]}
        page = {"Origin": PAGE, "Authorization": f"Bearer {MASTER}"}
        served = [http.post("/v1/chat/completions", json=body, headers=page) for _ in range(2)]
        refused = http.post("/v1/chat/completions", json=body, headers=page)
        metrics = http.get("/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text
    for r, remaining in zip(served, ("1", "0")):
        assert r.status_code == 200, r.text
        assert r.json()["object"] == "chat.completion"
        assert r.headers["access-control-allow-origin"] == PAGE
        exposed = r.headers["access-control-expose-headers"].split(", ")
        for name in ("x-request-id", "x-gateway-deployment", "x-ratelimit-remaining-requests"):
            assert name in exposed and name in r.headers, (name, r.headers)
        assert r.headers["x-ratelimit-remaining-requests"] == remaining, "no preflight took a request"
        assert r.headers["x-gateway-deployment"] == "a"
    assert_openai_error(refused, 429, "rate_limit_exceeded")
    assert refused.headers["access-control-allow-origin"] == PAGE and "retry-after" in refused.headers
    assert sims.a.count("/v1/chat/completions") == 2
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("llm_gateway_requests_total{"))
    assert counted == 3, "the three POSTs, and no preflight"
