"""What the gateway shows, and to whom: with keys on and with keys off (gateway/exposure.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Iterator

import httpx
import pytest

from tests.routing_env import ADMIN_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import ROOT, GatewayProcess, free_port

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MASTER = "sk-master-exposure-test-0000"
MSGS = [{"role": "user", "content": "hi"}]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def small_config(s: Sims) -> dict:
    cfg = base_config(s)
    cfg["routes"] = [r for r in cfg["routes"] if r["name"] in ("chat-default", "claude")]
    cfg["deployments"] = [d for d in cfg["deployments"] if d["name"] in ("a", "b", "claude")]
    return cfg


@pytest.fixture(scope="module")
def keyed(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY, "SIM_ANTHROPIC_KEY": "sk-ant-x"}
    with GatewayProcess(small_config(sims), env=env, require_ready=False) as g:
        yield g


@pytest.fixture(scope="module")
def open_gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    with GatewayProcess(small_config(sims), env={"SIM_ANTHROPIC_KEY": "sk-ant-x"}, require_ready=False) as g:
        yield g


def test_with_keys_probes_work_but_tell_anonymous_callers_nothing(keyed: GatewayProcess) -> None:
    assert httpx.get(f"{keyed.root_url}/health").status_code == 200
    assert httpx.head(f"{keyed.root_url}/health").status_code == 200
    anonymous = httpx.get(f"{keyed.root_url}/ready")
    assert set(anonymous.json()) == {"status"}, anonymous.text
    detailed = httpx.get(f"{keyed.root_url}/ready", headers=ADMIN)
    assert {"backends", "deployments", "routes"} <= set(detailed.json())
    assert detailed.status_code == anonymous.status_code
    for path in ("/metrics", "/openapi.json"):
        r = httpx.get(f"{keyed.root_url}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.text)
        assert httpx.get(f"{keyed.root_url}{path}", headers=ADMIN).status_code == 200
    with_master = httpx.get(f"{keyed.root_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"})
    assert with_master.status_code == 200


def test_an_invalid_body_is_reported_only_to_a_caller_with_a_key(keyed: GatewayProcess) -> None:
    bad = {"model": "chat-default", "messages": [{"role": "wizard", "content": "x"}]}
    r = httpx.post(f"{keyed.base_url}/chat/completions", json=bad)
    assert r.status_code == 401 and "role" not in r.text and "messages" not in r.text, r.text
    r = httpx.post(f"{keyed.base_url}/chat/completions", json=bad, headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"


def test_a_key_sees_only_the_models_it_may_use(keyed: GatewayProcess) -> None:
    made = httpx.post(f"{keyed.root_url}/admin/keys", headers=ADMIN, json={"alias": "narrow", "models": ["claude"]})
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    listed = httpx.get(f"{keyed.base_url}/models", headers=key).json()
    assert [m["id"] for m in listed["data"]] == ["claude"]
    hidden = httpx.get(f"{keyed.base_url}/models/chat-default", headers=key)
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    every = httpx.get(f"{keyed.base_url}/models", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert {m["id"] for m in every["data"]} == {"chat-default", "claude"}


@pytest.mark.parametrize("field,value", [("max_tokens", "10"), ("stream", "yes"), ("n", 2.0), ("stream", 1),
                                         ("temperature", "0.5"), ("seed", "7"), ("logprobs", "true")])
def test_known_fields_are_not_coerced(keyed: GatewayProcess, field: str, value: object) -> None:
    """The raw body goes upstream: coercing '10' here would make gateway and upstream disagree."""
    r = httpx.post(f"{keyed.base_url}/chat/completions", headers={"Authorization": f"Bearer {MASTER}"},
                   json={"model": "chat-default", "messages": MSGS, field: value})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_without_keys_a_web_page_cannot_use_the_gateway(open_gw: GatewayProcess) -> None:
    url = f"{open_gw.base_url}/chat/completions"
    body = json.dumps({"model": "chat-default", "messages": MSGS})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"content-type": content_type} if content_type else {}
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", (content_type, r.text)
    rebinding = httpx.post(url, content=body, headers={"content-type": "application/json",
                                                       "host": "attacker.example:8000"})
    assert rebinding.status_code == 403 and rebinding.json()["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{open_gw.port}", f"127.0.0.1:{open_gw.port}", "[::1]"):
        ok = httpx.post(url, content=body, headers={"content-type": "application/json; charset=utf-8",
                                                    "host": host})
        assert ok.status_code == 200, (host, ok.text)


def test_serving_a_public_address_without_keys_is_refused() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("LLM_GATEWAY_MASTER_KEY",
                                                           "LLM_GATEWAY_ALLOW_UNAUTHENTICATED")}
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", str(port)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing to serve 0.0.0.0 without API keys" in r.stderr, r.stderr
    cfg = ROOT / "deploy" / "configs" / "vllm-replicas.yaml"  # no local model: starts fast
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--host", "0.0.0.0", "--port", str(port),
                             "--config", str(cfg), "--allow-unauthenticated"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("did not start with --allow-unauthenticated")
    finally:
        proc.terminate()
        proc.wait(15)


def test_an_imported_secret_never_goes_on_the_command_line(keyed: GatewayProcess) -> None:
    env = {**os.environ, "LLM_GATEWAY_MASTER_KEY": MASTER, "LLM_GATEWAY_URL": keyed.root_url,
           "OLD_SECRET": "legacy-" + "z" * 30}

    def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--alias", "legacy", *args],
                              cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=60)

    literal = cli("--import-key", "legacy-literal-secret-0000")
    assert literal.returncode == 2 and "not the secret itself" in literal.stderr
    piped = cli("--import-key", "-", stdin="legacy-from-stdin-000000\n")
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["key"] == "legacy-from-stdin-000000"
    from_env = cli("--import-key", "env:OLD_SECRET")
    assert from_env.returncode == 0 and json.loads(from_env.stdout)["key"] == env["OLD_SECRET"]
    r = httpx.post(f"{keyed.base_url}/chat/completions", headers={"Authorization": "Bearer legacy-from-stdin-000000"},
                   json={"model": "chat-default", "messages": MSGS})
    assert r.status_code == 200
