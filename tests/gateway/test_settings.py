"""Settings: the environment read once at start-up, never while serving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backends.model_cards import load_cards
from gateway.settings import Settings
from routing.config import GatewayConfig


def test_settings_read_the_documented_names_once() -> None:
    s = Settings.from_env({"LLM_GATEWAY_MASTER_KEY": "sk-m", "LLM_GATEWAY_ADMIN_KEY": "adm",
                           "LLM_GATEWAY_ALLOW_UNAUTHENTICATED": "yes", "REDIS_URL": "redis://a/0",
                           "LLM_GATEWAY_REDIS_URL": "redis://b/0", "LLM_GATEWAY_ENGINE_CONTROL": "/run/ctl"})
    assert s.auth_enabled and s.admin_keys == ("adm", "sk-m") and s.allow_unauthenticated
    assert s.redis_url == "redis://b/0", "serve --redis-url (LLM_GATEWAY_REDIS_URL) wins over REDIS_URL"
    assert s.engine_control == "/run/ctl"
    bare = Settings.from_env({"LLM_GATEWAY_MASTER_KEY": "", "LLM_GATEWAY_ALLOW_UNAUTHENTICATED": "0"})
    assert not bare.auth_enabled and bare.admin_keys == () and not bare.allow_unauthenticated and not bare.redis_url


def test_settings_never_show_their_secrets() -> None:
    s = Settings(master_key="sk-master-secret", admin_key="adm-secret", redis_url="redis://:pw@h/0")
    for shown in (repr(s), str(s)):
        assert "sk-master-secret" not in shown and "adm-secret" not in shown and "pw" not in shown


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Any:
    from gateway.app import create_app

    config = GatewayConfig.model_validate({"models": []})
    return create_app(config, load_cards(), settings=Settings(master_key="sk-master-a", admin_key="adm-a"))


async def test_the_app_serves_on_the_settings_it_was_built_with(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing the environment after start-up changes nothing: the keys were read once."""
    monkeypatch.setenv("LLM_GATEWAY_MASTER_KEY", "sk-master-b")
    monkeypatch.setenv("LLM_GATEWAY_ADMIN_KEY", "adm-b")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        assert (await client.get("/v1/models")).status_code == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-master-b"})).status_code == 401
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-master-a"})).status_code == 200
        assert (await client.get("/admin/config", headers={"Authorization": "Bearer adm-b"})).status_code == 401
        assert (await client.get("/admin/config", headers={"Authorization": "Bearer adm-a"})).status_code == 200


def test_llm_gateway_log_format_overrides_logging_format() -> None:
    """As LLM_GATEWAY_LOG_LEVEL does server.log_level; a value that is neither format is refused, not ignored."""
    from gateway.settings import log_format

    text, json_config = GatewayConfig.model_validate({}), GatewayConfig.model_validate({"logging": {"format": "json"}})
    assert (log_format(text, {}), log_format(json_config, {})) == ("text", "json")
    assert log_format(text, {"LLM_GATEWAY_LOG_FORMAT": "json"}) == "json"
    assert log_format(json_config, {"LLM_GATEWAY_LOG_FORMAT": " Text "}) == "text"
    assert log_format(json_config, {"LLM_GATEWAY_LOG_FORMAT": ""}) == "json", "empty is unset"
    with pytest.raises(ValueError, match="LLM_GATEWAY_LOG_FORMAT must be 'text' or 'json', not 'xml'"):
        log_format(text, {"LLM_GATEWAY_LOG_FORMAT": "xml"})
