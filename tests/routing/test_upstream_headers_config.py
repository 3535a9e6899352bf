"""Config for extra upstream headers, Azure and deployment caps: what is refused (each with its line), what is
kept as a reference, how a deployment's headers join its provider's, and what GET /admin/config shows."""

from __future__ import annotations

import logging
import textwrap

import pytest

from gateway.routes.admin import mask_secrets
from routing.backend_factory import remote_backend, upstream_pool
from routing.config import ConfigError, GatewayConfig
from routing.config_checks import missing_secrets
from routing.config_file import parse_config
from routing.upstream_headers import merged


def config(providers: str, deployments: str = "") -> str:
    return textwrap.dedent("""\
        providers:
        {providers}
        deployments:
        {deployments}
          - {{name: base, provider: p, model: m}}
        routes: [{{name: r, deployments: [base]}}]
        """).format(providers=textwrap.indent(textwrap.dedent(providers), "  "),
                    deployments=textwrap.indent(textwrap.dedent(deployments), "  "))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>")
    return err.value.problems


def test_refused_headers_name_their_line_and_why() -> None:
    text = config("""\
        p:
          kind: openai
          base_url: https://api.example.com/v1
          api_key: ${KEY}
          headers:
            Host: elsewhere.example.com
            Content-Length: "12"
            Transfer-Encoding: chunked
            Authorization: ${OTHER}
            Bad Name: x
            X-Api-Key: sk-literal-key
            X-Line: "a\\nb"
        """, """\
        - name: d
          provider: p
          model: m
          headers: {connection: close, x-a: "1", X-A: "2"}
        - {name: l, provider: local, model: gemma, headers: {X-B: "1"}}
        """)
    got = problems(text)
    expected = [
        "<t>:7: providers.p.headers.Host: Host comes from base_url",
        "<t>:8: providers.p.headers.Content-Length: Content-Length is the body's length",
        "<t>:9: providers.p.headers.Transfer-Encoding: Transfer-Encoding is a hop-by-hop header",
        "<t>:10: providers.p.headers.Authorization: Authorization would replace the credentials api_key sends",
        "<t>:11: providers.p.headers.Bad Name: 'Bad Name' is not an HTTP header name",
        "<t>:12: providers.p.headers.X-Api-Key: give this value as a reference",
        "<t>:13: providers.p.headers.X-Line: a header value cannot hold a line break",
        "<t>:19: deployments[0].headers.connection: connection is a hop-by-hop header",
        "<t>:19: deployments[0].headers.X-A: 'X-A' is given twice (also as 'x-a')",
        "<t>:20: deployments[1].headers: a local model is not called over HTTP",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in got), (line, got)
    assert len(got) == len(expected) + 1, got  # and the local model gemma that `models` does not have


def test_kind_specific_headers_and_settings() -> None:
    got = problems(config("""\
        p: {kind: azure, base_url: "https://res.openai.azure.com/openai/v1", api_key: "${K}", headers: {api-key: "${K2}"}}
        c: {kind: anthropic, base_url: "https://api.anthropic.com", headers: {anthropic-version: "2023-01-01"}}
        o: {kind: openai, base_url: "https://api.openai.com/v1", api_version: "2024-10-21"}
        """))
    assert any(p.startswith("<t>:2: providers.p.headers.api-key: api-key would replace") for p in got), got
    assert any(p.startswith("<t>:2: providers.p.base_url: give the resource's root") for p in got), got
    assert any(p.startswith("<t>:3: providers.c.headers.anthropic-version: anthropic-version comes from "
                            "anthropic_version") for p in got), got
    assert any(p.startswith("<t>:4: providers.o.api_version: api_version is for kind azure only") for p in got), got
    bad = problems(config('p: {kind: azure, base_url: "https://r.openai.azure.com", api_version: "latest"}'))
    assert any(p.startswith("<t>:2: providers.p.api_version:") for p in bad), bad
    caps = problems(config("p: {kind: openai, base_url: https://x/v1}", "- {name: d, provider: p, model: m, rpm: 0}"))
    assert any(p.startswith("<t>:4: deployments[0].rpm:") for p in caps), caps


def test_a_good_config_keeps_references_and_masks_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZ_TOKEN", "entra-secret-token")
    monkeypatch.setenv("ORG", "org-from-env")
    text = config("""\
        p:
          kind: azure
          base_url: https://res.openai.azure.com
          api_version: v1
          headers: {Authorization: "Bearer ${AZ_TOKEN}", OpenAI-Organization: "${ORG}", X-Env: prod}
        """, """\
        - {name: d, provider: p, model: gpt-4o, rpm: 60, tpm: 90000, headers: {x-env: staging, X-Project: "${ORG}"}}
        """)
    cfg = parse_config(text, "<t>")
    assert cfg.providers["p"].headers["OpenAI-Organization"] == "${ORG}"  # kept as written, resolved where used
    assert cfg.deployments[0].rpm == 60 and cfg.deployments[0].tpm == 90000
    shown = mask_secrets(cfg.model_dump(mode="json"))
    assert shown["providers"]["p"]["headers"] == {"Authorization": "***", "OpenAI-Organization": "${ORG}",
                                                  "X-Env": "***"}
    assert shown["deployments"][0]["headers"] == {"x-env": "***", "X-Project": "${ORG}"}
    assert "entra-secret-token" not in str(shown) and "prod" not in str(shown["providers"]["p"]["headers"])
    sent = merged(cfg.providers["p"], cfg.deployments[0])
    assert sent == {"Authorization": "Bearer entra-secret-token", "OpenAI-Organization": "org-from-env",
                    "x-env": "staging", "X-Project": "org-from-env"}


async def test_a_reference_with_no_value_is_warned_about_and_not_sent(caplog: pytest.LogCaptureFixture,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = GatewayConfig.model_validate({
        "models": [], "providers": {"p": {"kind": "openai", "base_url": "https://x/v1",
                                          "headers": {"X-Auth-Token": "${NOT_SET_ANYWHERE}", "X-Ok": "yes"}}},
        "deployments": [{"name": "d", "provider": "p", "model": "m"}]})
    assert missing_secrets(cfg) == ["provider 'p' header X-Auth-Token: ${NOT_SET_ANYWHERE}: the environment "
                                    "variable NOT_SET_ANYWHERE is not set (give a default as "
                                    "${NOT_SET_ANYWHERE:-value} if it may be) (the header would not be sent)"]
    with caplog.at_level(logging.WARNING, logger="llm_gateway.routing"):
        provider = cfg.providers["p"]
        pool = upstream_pool(provider)
        backend = remote_backend(cfg.deployments[0], provider, pool, None)
        await pool.aclose()
    assert backend._headers["X-Ok"] == "yes" and "X-Auth-Token" not in backend._headers  # type: ignore[attr-defined]
    assert "header X-Auth-Token has no value here" in caplog.text
