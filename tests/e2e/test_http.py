"""End-to-end HTTP behaviour a raw client sees: errors, limits, request ids, liveness and readiness."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import MODEL
from tests.server import GatewayProcess

JSON = {"content-type": "application/json"}  # raw bodies, sent as JSON (without it, 415 while keys are off)

pytestmark = pytest.mark.e2e


def test_health_and_ready(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.root_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.root_url}/ready")
    assert ready.status_code == 200
    assert ready.json()["backends"][MODEL]["state"] == "ready"


def test_request_id_is_echoed_or_generated(gateway: GatewayProcess) -> None:
    r = httpx.get(f"{gateway.root_url}/health", headers={"x-request-id": "req-42.a"})
    assert r.headers["x-request-id"] == "req-42.a"
    generated = httpx.get(f"{gateway.root_url}/health").headers["x-request-id"]
    assert len(generated) == 32
    # An id with odd characters is replaced, never reflected.
    weird = httpx.get(f"{gateway.root_url}/health", headers={"x-request-id": "a b<script>"})
    assert weird.headers["x-request-id"] != "a b<script>"
    # Errors and streams carry it too.
    err = httpx.post(f"{gateway.base_url}/chat/completions", content=b"{", headers={"x-request-id": "e1", **JSON})
    assert err.headers["x-request-id"] == "e1"
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", headers={"x-request-id": "s1"}, json={
        "model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": True}) as s:
        assert s.headers["x-request-id"] == "s1"
        s.read()


def test_malformed_json_is_400(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=b"[1, 2]", headers=JSON)
    assert r.status_code == 400


def test_oversized_body_is_413(gateway: GatewayProcess) -> None:
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 300_000 + b'"}]}'
    r = httpx.post(f"{gateway.base_url}/chat/completions", content=big, headers=JSON)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit must hold on a chunked body too
        for _ in range(40):
            yield b"a" * 10_000

    r = httpx.post(f"{gateway.base_url}/chat/completions", content=chunks(), headers=JSON)
    assert r.status_code == 413


def test_unknown_fields_are_ignored(gateway: GatewayProcess) -> None:
    r = httpx.post(f"{gateway.base_url}/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "x", "weird": [1]}], "max_tokens": 2,
        "store": True, "metadata": {"a": "b"}, "reasoning_effort": "low", "brand_new_param": {"x": 1},
    })
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body", [
    b"", b"null", b"42", b'"text"', b"{}", b'{"model": null}', b'{"model": 5, "messages": "hi"}',
    b'{"model": "gemma-3-270m", "messages": [{}]}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": 5}]}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "tool", "content": "x"}]}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "n": 0}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}',
    b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "frob"}}}}}]}',
    b'{"model": "gemma-3-270m", "prompt": [], "max_tokens": 2}',
    b'{"model": "gemma-3-270m", "prompt": [999999999], "max_tokens": 2}',
    b'\xff\xfe',
])
def test_client_mistakes_are_4xx_never_5xx(gateway: GatewayProcess, body: bytes) -> None:
    for path in ("/chat/completions", "/completions"):
        r = httpx.post(f"{gateway.base_url}{path}", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert "Traceback" not in r.text


def test_unknown_route_and_method(gateway: GatewayProcess) -> None:
    r = httpx.get(f"{gateway.base_url}/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{gateway.base_url}/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
