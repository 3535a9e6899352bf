"""`${...}` in config values (routing/config_env.py): the three forms, anywhere in any string, secrets kept as
references until used, and an unresolvable one reported with its line while nothing else changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from routing import config_env
from routing.config import ConfigError
from routing.config_file import parse_config

pytestmark = pytest.mark.unit


def test_the_three_forms_and_the_escape(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text("sk-from-a-file\n")
    env = {"HOST": "gpu-1", "EMPTY": ""}
    assert config_env.expand("http://${HOST}:8000/v1", env) == "http://gpu-1:8000/v1"
    assert config_env.expand("${PORT:-8000}", env) == "8000"
    assert config_env.expand("${EMPTY:-fallback}", env) == "fallback"  # unset or empty, as in a shell
    assert config_env.expand("${EMPTY}", env) == ""
    assert config_env.expand(f"${{file:{secret}}}", env) == "sk-from-a-file"  # its trailing newline dropped
    assert config_env.expand("cost $${HOST} and ${HOST}", env) == "cost ${HOST} and gpu-1"
    assert config_env.expand("no references $5", env) == "no references $5"
    with pytest.raises(config_env.Unresolved, match="MISSING is not set"):
        config_env.expand("${MISSING}", env)
    with pytest.raises(config_env.Unresolved, match="cannot read the file"):
        config_env.expand(f"${{file:{tmp_path / 'nope'}}}", env)


def test_a_secret_is_a_whole_reference() -> None:
    assert config_env.is_reference("${OPENAI_API_KEY}") and config_env.is_reference("${file:/run/secrets/k}")
    assert config_env.is_reference("${K:-}")
    assert not config_env.is_reference("sk-literal") and not config_env.is_reference("Bearer ${K}")
    assert config_env.variable("${K:-x}") == "K" and config_env.variable("${file:/x}") is None
    assert config_env.resolve("${K}", {"K": "v"}) == "v" and config_env.resolve("${K}", {}) is None
    assert config_env.resolve("${K:-}", {}) is None  # empty is no secret
    assert config_env.problem("${K}", {}) is not None and config_env.problem("${K}", {"K": "v"}) is None


CONFIG = """\
providers:
  gpu:
    kind: vllm
    base_url: http://${VLLM_HOST}:${VLLM_PORT:-8000}/v1
    api_key: ${VLLM_API_KEY}
deployments:
  - {name: big, provider: gpu, model: "${VLLM_MODEL:-qwen}"}
routes:
  - {name: chat, deployments: [big]}
server:
  port: ${GATEWAY_PORT:-9000}
"""


def test_every_string_expands_when_read_and_secrets_stay_references(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_HOST", "gpu-1")
    monkeypatch.delenv("VLLM_PORT", raising=False)
    monkeypatch.delenv("VLLM_MODEL", raising=False)
    monkeypatch.delenv("GATEWAY_PORT", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    cfg = parse_config(CONFIG, "gw.yaml")
    assert cfg.providers["gpu"].base_url == "http://gpu-1:8000/v1"
    assert cfg.deployments[0].model == "qwen" and cfg.server.port == 9000  # a number given as a reference
    assert cfg.providers["gpu"].api_key == "${VLLM_API_KEY}"  # resolved only where it is used


def test_an_unset_variable_is_a_line_numbered_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_HOST", raising=False)
    with pytest.raises(ConfigError) as err:
        parse_config(CONFIG, "gw.yaml")
    assert err.value.problems == [
        "gw.yaml:4: providers.gpu.base_url: ${VLLM_HOST}: the environment variable VLLM_HOST is not set "
        "(give a default as ${VLLM_HOST:-value} if it may be)"]


def test_unset_variables_and_other_problems_come_in_one_round(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_HOST", raising=False)
    monkeypatch.setenv("GATEWAY_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        parse_config(CONFIG.replace("${VLLM_API_KEY}", "sk-literal-key"), "gw.yaml")
    problems = err.value.problems
    assert problems[0].startswith("gw.yaml:4: providers.gpu.base_url: ${VLLM_HOST}")
    assert "not a literal" in problems[1]  # a semantic check, though the schema failed elsewhere
    assert problems[2].startswith("gw.yaml:11: server.port: ") and len(problems) == 3  # the schema's, at once
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    with pytest.raises(ConfigError) as err:
        parse_config(CONFIG.replace("${VLLM_API_KEY}", "sk-literal-key"), "gw.yaml")
    assert [p.split(": ")[0] for p in err.value.problems] == ["gw.yaml:4", "gw.yaml:5"]
    assert "not a literal" in err.value.problems[1]  # a semantic check, with the unset variable
