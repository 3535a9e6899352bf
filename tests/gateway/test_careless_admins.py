"""Careless edits never take the gateway down, and the admin surface never shows a secret.

A file that is not UTF-8, an emptied file, a key given twice: each is refused with a line-numbered
message, the old config keeps serving, and the watcher applies the next good edit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from routing.config import ConfigError
from routing.config_file import parse_config
from tests.routing_env import ADMIN_KEY, Sims, admin, base_config, sims, start_gateway  # noqa: F401
from tests.server import ROOT, GatewayProcess

MSGS = [{"role": "user", "content": "hi"}]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    text = "routes:\n  - name: a\n    deployments: [x]\nserver:\n  port: 1\nroutes: []\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "<t>")
    assert err.value.problems == ["<t>:6: (top level): 'routes' is given twice (first on line 1)"]
    with pytest.raises(ConfigError) as err:
        parse_config("server:\n  port: 1\n  port: 2\n", "<t>")
    assert err.value.problems == ["<t>:3: server: 'port' is given twice (first on line 2)"]


def test_a_redis_password_must_not_be_a_literal() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("redis:\n  url: redis://:hunter2@cache:6379/0\n", "<t>")
    assert err.value.problems[0].startswith("<t>:2: redis.url: a URL with a password must be a ${ENV_VAR}")
    assert parse_config("redis:\n  url: redis://cache:6379/0\n").redis.url == "redis://cache:6379/0"
    assert parse_config("redis:\n  url: ${REDIS_URL}\n").redis.url == "${REDIS_URL}"


@pytest.mark.process
def test_check_on_a_file_that_is_not_utf8_and_an_unset_redis_variable(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"server:\n  port: 9000\n# caf\xe9\n")
    r = cli("check", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{bad}:3: the file is not UTF-8 text (byte 0xe9" in r.stderr
    unset = tmp_path / "redis.yaml"
    unset.write_text("redis:\n  url: ${NO_SUCH_REDIS_URL_SET}\n")
    r = cli("check", str(unset))
    assert r.returncode == 0 and "NO_SUCH_REDIS_URL_SET is not set" in r.stderr, r.stderr


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    cfg = base_config(sims)
    cfg["providers"]["vllm-b"]["base_url"] = f"http://gateway:s3cr3t-pass@127.0.0.1:{sims.b.port}/v1"
    with start_gateway(sims, cfg) as g:
        yield g
    sims.reset()


def wait_reload(gw: GatewayProcess, after: float) -> dict[str, Any]:
    deadline = time.monotonic() + 30  # the watcher looks every 0.2 s; a busy machine may be slow to
    while time.monotonic() < deadline:
        last = admin(gw, "GET", "/config").json()["last_reload"]
        if last["at"] > after:
            return last
        time.sleep(0.1)
    raise AssertionError("no reload happened")


@pytest.mark.process
def test_unreadable_and_emptied_files_are_refused_and_the_watcher_lives_on(gw: GatewayProcess,
                                                                          sims: Sims) -> None:
    good = gw.config_path.read_text()
    version = admin(gw, "GET", "/config").json()["version"]
    # One byte that is not UTF-8.
    t0 = time.time()
    gw.config_path.write_bytes(good.encode() + b"\n# \xff\n")
    last = wait_reload(gw, t0)
    assert last["ok"] is False and "is not UTF-8 text" in last["problems"][0], last
    line = good.count("\n") + 2
    assert last["problems"][0].startswith(f"{gw.config_path}:{line}:"), last
    forced = admin(gw, "POST", "/reload")
    assert forced.status_code == 400 and forced.json()["problems"] == last["problems"], forced.text
    # A truncated write: nothing left in the file.
    t1 = time.time()
    gw.config_path.write_text("")
    last = wait_reload(gw, t1)
    assert last["ok"] is False and "refusing to replace version" in last["problems"][0], last
    assert last["problems"][0].startswith(f"{gw.config_path}:1:")
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS}, timeout=10)
    assert r.status_code == 200, "the old config still serves"
    # The watcher is alive: a good edit after all that is applied.
    edited = yaml.safe_load(good)
    edited["routes"][0]["deployments"] = ["b", "a"]
    t2 = time.time()
    gw.config_path.write_text(yaml.safe_dump(edited, sort_keys=False))
    last = wait_reload(gw, t2)
    assert last["ok"] is True and admin(gw, "GET", "/config").json()["version"] == version + 1
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS}, timeout=10)
    assert r.headers["x-gateway-deployment"] == "b"


@pytest.mark.process
def test_admin_config_masks_url_passwords(gw: GatewayProcess) -> None:
    shown = admin(gw, "GET", "/config").text
    assert "s3cr3t-pass" not in shown
    assert "http://gateway:***@127.0.0.1:" in shown
