"""The YAML config: line-numbered errors, and the CLI that checks and lists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from routing.config import ConfigError
from routing.config_file import parse_config
from tests.server import ROOT

GOOD = """\
server:
  port: 9000
models:
  - card: gemma-3-270m
    n_ctx: 4096
"""


def test_good_config() -> None:
    cfg = parse_config(GOOD, known_cards={"gemma-3-270m"})
    assert cfg.server.port == 9000 and cfg.models[0].n_ctx == 4096


def test_default_config_serves_gemma() -> None:
    cfg = parse_config("")
    assert [m.card for m in cfg.models] == ["gemma-3-270m", "all-minilm-l6-v2"]  # chat, and /v1/embeddings
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8000


@pytest.mark.parametrize("text,needle", [
    ("server:\n  port: 70000\n", "<t>:2: server.port:"),
    ("models:\n  - card: gemma-3-270m\n    n_ctx: -1\n", "<t>:3: models[0].n_ctx:"),
    ("models:\n  - card: gemma-3-270m\n    colour: red\n", "<t>:3: models[0].colour: Extra inputs"),
    ("models:\n  - card: nope\n", "<t>:2: models[0].card: no model card with id 'nope'"),
    ("models:\n  - card: gemma-3-270m\n  - card: gemma-3-270m\n", "<t>:3: models[1].card: model 'gemma-3-270m' is listed twice"),
    ("server: [\n", "<t>:2: invalid YAML"),
    ("- a\n- b\n", "<t>:1: the top level must be a mapping"),
])
def test_errors_are_line_numbered(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>", known_cards={"gemma-3-270m"})
    assert any(p.startswith(needle) for p in err.value.problems), err.value.problems


# A schema error in one route and one provider, and dangling references elsewhere: all in one round. What
# names a part that failed the schema (the provider `odd`, the route `one`) is not reported again.
BOTH_KINDS = """\
providers:
  up: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}
  odd: {kind: nope, base_url: 'http://127.0.0.1:1/v1'}
deployments:
  - {name: a, provider: up, model: m}
  - {name: b, provider: ghost, model: m}
  - {name: c, provider: odd, model: m}
routes:
  - name: one
    deployments: [a]
    timeouts: {queue_s: -1}
  - name: two
    deployments: [a, missing, c]
  - name: three
    deployments: [b]
    rules:
      - {when: {header: {x: y}}, route: one}
      - {when: {header: {x: z}}, route: nowhere}
"""
BOTH_KINDS_PROBLEMS = [
    "{f}:3: providers.odd.kind: Input should be 'openai', 'vllm', 'anthropic' or 'azure'",
    "{f}:6: deployments[1].provider: no provider 'ghost' (known: odd, up, local)",
    "{f}:11: routes[0].timeouts.queue_s: Input should be greater than 0",
    "{f}:13: routes[1].deployments[1]: no deployment named 'missing'",
    "{f}:18: routes[2].rules[1].route: no route named 'nowhere'",  # routes[2] of the file, [1] of what passed
]


def test_schema_and_cross_reference_problems_come_in_one_round_in_the_file_s_order() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BOTH_KINDS, "<t>")
    assert err.value.problems == [p.format(f="<t>") for p in BOTH_KINDS_PROBLEMS]


def test_a_whole_section_that_fails_the_schema_stands_for_every_name_in_it() -> None:
    text = ("providers: [up]\n"  # a list, not a mapping: no provider is known, so none is called missing
            "deployments:\n  - {name: a, provider: up, model: m}\n"
            "routes:\n  - {name: r, deployments: [a, nope]}\n"
            "server: {port: -1}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>")
    assert [p.split(": ", 2)[:2] for p in err.value.problems] == [
        ["<t>:1", "providers"], ["<t>:5", "routes[0].deployments[1]"], ["<t>:6", "server.port"]]
    with pytest.raises(ConfigError) as err:  # nor do the embedded default models stand in for it
        parse_config("models: 5\n", "<t>", known_cards={"qwen"})
    assert [p.split(": ", 2)[:2] for p in err.value.problems] == [["<t>:1", "models"]]


def test_parts_left_out_neither_bring_back_the_default_models_nor_look_missing() -> None:
    """Every deployment and route left out: the embedded default models do not come back to be checked
    (this file names none). A model left out is still there for the deployment that names it."""
    text = ("deployments:\n  - {name: d, provider: local, model: gemma-3-270m, weight: -1}\n"
            "routes:\n  - {name: r, deployments: [d], colour: red}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>", known_cards={"qwen"})
    assert [p.split(": ", 2)[:2] for p in err.value.problems] == [["<t>:2", "deployments[0].weight"],
                                                                  ["<t>:4", "routes[0].colour"]]
    with pytest.raises(ConfigError) as err:
        parse_config("models:\n  - {card: gemma-3-270m, n_ctx: -1}\n" + text.replace(", weight: -1", ""), "<t>")
    assert [p.split(": ", 2)[1] for p in err.value.problems] == ["models[0].n_ctx", "routes[0].colour"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.process
def test_cli_version_models_and_check(tmp_path: Path) -> None:
    v = cli("--version")
    assert v.returncode == 0 and v.stdout.startswith("llm-gateway ")
    m = cli("models")
    assert m.returncode == 0
    for card in ("gemma-3-270m", "smollm2-135m-instruct", "qwen2.5-7b-instruct-awq", "gpt-4o-mini", "claude-haiku-4-5"):
        assert card in m.stdout
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    assert cli("check", str(good)).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  - card: gemma-3-270m\n    n_ctx: zero\n")
    r = cli("check", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3: models[0].n_ctx:" in r.stderr
    r = cli("serve", "--config", str(bad))
    assert r.returncode == 2 and ":3:" in r.stderr


@pytest.mark.process
def test_check_reports_everything_at_once_as_text_or_json(tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("models:\n  - card: gemma-3-270m\n    model_path: /nonexistent/model.gguf\n"
                   "providers:\n  up: {kind: openai, base_url: 'http://${NO_SUCH_HOST_VAR}/v1',"
                   " api_key: '${NO_SUCH_KEY_VAR}'}\n")
    r = cli("check", str(cfg))  # an unset reference: the config's own error; serve could not start
    assert r.returncode == 2 and f"{cfg}:5: providers.up.base_url: ${{NO_SUCH_HOST_VAR}}" in r.stderr, r.stderr
    cfg.write_text("models:\n  - card: gemma-3-270m\n    model_path: /nonexistent/model.gguf\n"
                   "providers:\n  up: {kind: openai, base_url: 'http://127.0.0.1:1/v1', api_key: '${NO_SUCH_KEY_VAR}'}\n")
    r = cli("check", str(cfg), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 2 and report["ok"] is False
    assert report["errors"] == [f"{cfg}:2: models[0]: model_path /nonexistent/model.gguf does not exist"]
    assert report["warnings"] == ["provider 'up': ${NO_SUCH_KEY_VAR}: the environment variable NO_SUCH_KEY_VAR is not "
                                  "set (give a default as ${NO_SUCH_KEY_VAR:-value} if it may be)"]
    cfg.write_text("providers:\n  up: {kind: openai, base_url: 'http://127.0.0.1:1/v1', api_key: '${NO_SUCH_KEY_VAR}'}\n")
    assert cli("check", str(cfg)).returncode == 0  # a warning: the key may be set where the gateway runs
    strict = cli("check", str(cfg), "--strict", "--json")
    assert strict.returncode == 2 and json.loads(strict.stdout)["ok"] is False
    assert json.loads(cli("check", str(cfg), "--json").stdout)["summary"]["providers"] == 1


@pytest.mark.process
def test_check_reports_weights_and_secrets_in_the_round_of_a_schema_error(tmp_path: Path) -> None:
    """A schema error elsewhere in the file does not hide what only this machine can tell: a local model whose
    weights are not here (at its line in the file, past a model left out for its own error) and an unset
    secret, all in one round and in the order of the file."""
    import json

    cfg = tmp_path / "gw.yaml"
    cfg.write_text("models:\n"
                   "  - card: gemma-3-270m\n    n_ctx: -1\n"  # a schema error: this model is left out
                   "  - card: smollm2-135m-instruct\n    model_path: /nonexistent/smol.gguf\n"
                   "providers:\n  up: {kind: openai, base_url: 'http://127.0.0.1:1/v1', api_key: '${NO_SUCH_KEY_VAR}'}\n"
                   "deployments:\n  - {name: d, provider: up, model: m}\n"
                   "routes:\n  - {name: r, deployments: [d], retry: {max_attempts: 0}}\n")
    report = json.loads(cli("check", str(cfg), "--json").stdout)
    assert [e.split(": ", 2)[:2] for e in report["errors"]] == [
        [f"{cfg}:3", "models[0].n_ctx"], [f"{cfg}:4", "models[1]"], [f"{cfg}:11", "routes[0].retry.max_attempts"]]
    assert "model_path /nonexistent/smol.gguf does not exist" in report["errors"][1]
    assert [w.split(":")[0] for w in report["warnings"]] == ["provider 'up'"]


@pytest.mark.process
def test_check_and_serve_report_schema_and_cross_reference_problems_together(tmp_path: Path) -> None:
    import json

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(BOTH_KINDS)
    expected = [p.format(f=cfg) for p in BOTH_KINDS_PROBLEMS]
    r = cli("check", str(cfg), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 2 and report["ok"] is False and report["errors"] == expected, r.stdout
    r = cli("check", str(cfg))
    assert r.returncode == 2 and r.stderr.splitlines() == expected, r.stderr
    r = cli("serve", "--config", str(cfg))
    assert r.returncode == 2 and r.stderr.splitlines() == expected, r.stderr


@pytest.mark.process
def test_shipped_example_config_passes_check() -> None:
    r = cli("check", str(ROOT / "deploy" / "gateway.example.yaml"))
    assert r.returncode == 0, r.stderr


@pytest.mark.process
@pytest.mark.parametrize("name", ["cpu-only.yaml", "gpu-first.yaml", "vllm-replicas.yaml"])
def test_example_routing_configs_pass_check(name: str) -> None:
    r = cli("check", str(ROOT / "deploy" / "configs" / name))
    assert r.returncode == 0, r.stderr


def test_vllm_image_never_forces_the_slow_awq_kernel() -> None:
    text = (ROOT / "docker" / "vllm" / "Dockerfile").read_text()
    assert text.startswith("# ") and "FROM vllm/vllm-openai:" in text
    launch = [line for line in text.splitlines() if line.startswith(("ENTRYPOINT", "CMD"))]
    assert launch and all("--quantization" not in line for line in launch)
