"""The keyless gateway's two refusals, on their own: a Host that is not one of its names (DNS rebinding),
and a /v1 POST that is not JSON (a web page's simple cross-origin request)."""

from __future__ import annotations

import pytest

from gateway.exposure import Exposure, host_name, is_loopback


@pytest.mark.parametrize("raw, name", [(b"127.0.0.1:8000", "127.0.0.1"), (b"LocalHost", "localhost"),
                                       (b"[::1]:8000", "::1"), (b"::1", "::1"), (b"evil.example:80", "evil.example")])
def test_host_names_lose_their_port_and_case(raw: bytes, name: str) -> None:
    assert host_name(raw) == name


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("app.localhost", True), ("localhost.evil.example", False),
                                            ("10.0.0.1", False), ("0.0.0.0", False)])
def test_only_loopback_names_are_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_rebinding_host_is_403_and_a_form_post_is_415() -> None:
    e = Exposure(allowed_hosts=["gw.internal"], check_host=True)
    json = b"application/json; charset=utf-8"
    assert e.refusal("POST", "/v1/chat/completions", b"127.0.0.1:8000", json) is None
    assert e.refusal("POST", "/v1/chat/completions", b"gw.internal", json) is None
    refused = e.refusal("POST", "/v1/chat/completions", b"attacker.example", json)
    assert refused is not None and (refused.status_code, refused.code) == (403, "host_not_allowed")
    form = e.refusal("POST", "/v1/chat/completions", b"localhost", b"text/plain")
    assert form is not None and (form.status_code, form.code) == (415, "unsupported_media_type")
    assert e.refusal("GET", "/v1/models", b"localhost", None) is None
    assert Exposure([], check_host=False).refusal("GET", "/health", b"10.1.2.3", None) is None
