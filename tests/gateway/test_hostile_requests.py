"""Hostile and careless clients, table-driven: every answer is the right status in OpenAI's error shape,
carries no secret, and leaves the deployments' breakers and the other tenants untouched.

One gateway with a master key, a virtual key, simulated vLLM, OpenAI and Anthropic upstreams and the
real local model. Each case is sent as one tenant (the virtual key); afterwards, every breaker must be
closed and the master key must still get answers from every route.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest

from tests.conftest import MODEL
from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.sim import Fault

pytestmark = [pytest.mark.e2e, pytest.mark.process]

MASTER = "sk-master-hostile-test"
SECRETS = (MASTER, ADMIN_KEY, OPENAI_KEY, ANTHROPIC_KEY)
ROUTES = ["chat-default", "gpt-first", "claude", MODEL]  # vLLM, OpenAI, Anthropic, llama.cpp
MSGS = [{"role": "user", "content": "Hello"}]


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text nesting arrays and objects `depth` deep (no JSON library writes that deep)."""
    text = leaf
    for i in range(depth):
        text = f"[{text}]" if i % 2 else f'{{"k": {text}}}'
    return text


def raw(template: str, depth: int, leaf: str = "1") -> bytes:
    """A body with `@` replaced by a nested value; the model is filled in when it is sent."""
    return ("{" + template.replace("@", nested(depth, leaf)) + "}").encode()


@dataclass
class Case:
    name: str
    body: Any  # a dict (sent as JSON) or bytes (sent as they are)
    status: int | tuple[int, ...]
    code: str | None = None
    param: str | None = None
    routes: list[str] = field(default_factory=lambda: list(ROUTES))
    path: str = "/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)


def chat(**extra: Any) -> dict[str, Any]:
    return {"messages": MSGS, **extra}


CASES = [
    # Nesting that orjson parses (up to 1,024) but cannot write back (over 254): refused at the door.
    *[Case(f"deep-{where}-{depth}", raw(template, depth, leaf), 400, "invalid_json")
      for depth in (65, 255, 600, 1000)
      for where, template, leaf in (
          ("metadata", '"messages": [{"role": "user", "content": "x"}], "metadata": {"x": @}', "1"),
          ("unknown-field", '"messages": [{"role": "user", "content": "x"}], "extra_field": @', "1"),
          ("tool-parameters", '"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
                              '"function": {"name": "f", "parameters": @}}]', "1"),
          ("content", '"messages": [{"role": "user", "content": @}]', '"x"'))],
    Case("deep-with-temperature-0", raw('"messages": [{"role": "user", "content": "x"}], "temperature": 0, '
                                        '"metadata": {"x": @}', 300), 400, "invalid_json"),
    Case("deeper-than-orjson", b'{"messages": ' + b"[" * 1100 + b"]" * 1100 + b"}", 400, "invalid_json"),
    # Shapes a provider translation would trip over.
    Case("tool-choice-function-as-string", chat(tools=[{"type": "function", "function": {"name": "f"}}],
                                                tool_choice={"type": "function", "function": "f"}),
         400, "invalid_value", "tool_choice"),
    Case("tool-choice-unknown-string", chat(tool_choice="sometimes"), 400, "invalid_value", "tool_choice"),
    Case("tool-choice-list", chat(tool_choice=["auto"]), 400, "invalid_value", "tool_choice"),
    Case("tool-function-as-string", chat(tools=[{"type": "function", "function": "f"}]), 400, "invalid_value",
         "tools"),
    Case("tool-parameters-as-string", chat(tools=[{"type": "function", "function": {"name": "f",
                                                                                     "parameters": "x"}}]),
         400, "invalid_value", "tools"),
]


def _wrong_types() -> list[Case]:
    """Every known field of a chat request, given values of the wrong types: a 400 naming that field."""
    wrong: dict[str, list[Any]] = {
        "model": [1, None, [], {}], "messages": ["hi", {}, 3, [1], [{"role": 1, "content": "x"}]],
        "max_tokens": ["10", 1.5, True, -1, 0, []], "max_completion_tokens": ["5", {}, 0],
        "temperature": ["0.5", [], True, 3, -1], "top_p": ["1", {}, 0, 2], "n": ["2", 2.5, 0, 500],
        "stop": [1, {}, [1], ["a", "b", "c", "d", "e"]], "seed": ["7", 1.5, []], "presence_penalty": ["0", 5],
        "frequency_penalty": [[], -3], "stream": ["yes", 1, {}], "stream_options": ["x", [], {"include_usage": "x"}],
        "user": [1, []], "top_k": ["4", -1], "min_p": ["0.1", 2], "repetition_penalty": ["1", 0],
        "ignore_eos": ["no", 0], "response_format": ["json", {"type": "xml"}, {"type": "json_schema"}],
        "logprobs": ["true", 1], "top_logprobs": ["3", 30], "tools": ["f", {}, [1]], "tool_choice": [1, []],
    }
    cases = []
    for name, values in wrong.items():
        for i, value in enumerate(values):
            body = {"messages": MSGS, name: value}
            if name == "stream_options":
                body["stream"] = True
            cases.append(Case(f"wrong-type-{name}-{i}", body, 400, param=name, routes=["chat-default"]))
    return cases


BIG = 5 * 1024 * 1024  # over server.max_body_bytes (4 MiB)
MALFORMED = [b"{", b"", b"null", b"[]", b'"a string"', b"{'model': 'x'}", b'{"messages": [],}',
             b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
             b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
             b'{"messages": [{"role": "user", "content": "\\ud800"}]}', b"\xef\xbb\xbf{}",
             b'{"messages": [{"role": "user", "content": "x"}]} trailing']

MORE_CASES = [
    *[Case(f"malformed-{i}", body, 400, routes=["chat-default"]) for i, body in enumerate(MALFORMED)],
    *_wrong_types(),
    Case("huge-body", b'{"messages": [{"role": "user", "content": "' + b"a" * BIG + b'"}]}', 413,
         "request_too_large", routes=["chat-default"]),
    Case("many-messages", {"messages": [{"role": "user", "content": "x"}] * 20_000}, (200, 400),
         routes=["chat-default", MODEL]),
    Case("long-content-local", {"messages": [{"role": "user", "content": "word " * 200_000}]}, 400,
         "context_length_exceeded", routes=[MODEL]),
    Case("unknown-route", chat(), 404, "model_not_found", routes=["no-such-model"]),
    *[Case(f"cache-ttl-{v}", chat(temperature=0), 400, param="x-gateway-cache-ttl", routes=["chat-default"],
           headers={"x-gateway-cache-ttl": v}) for v in ("abc", "-1", "inf", "nan", "0", "")],
    Case("content-type-json-charset", chat(), 200, routes=["chat-default"],
         headers={"content-type": "application/json; charset=utf-8"}),
    Case("odd-request-id", chat(), 200, routes=["chat-default"], headers={"x-request-id": "../../etc/passwd<script>"}),
    Case("long-header", chat(), (200, 400, 431), routes=["chat-default"], headers={"x-padding": "a" * 16_000}),
]
CASES += MORE_CASES

AUTH_VARIANTS = [("no-header", None), ("lower-bearer", "bearer {key}"), ("basic", "Basic {key}"),
                 ("empty", ""), ("bearer-only", "Bearer"), ("extra-spaces", "Bearer    {key}"),
                 ("wrong-key", "Bearer sk-gw-not-a-real-key"), ("very-long", "Bearer " + "x" * 5000),
                 ("two-tokens", "Bearer {key} {key}"), ("master-lookalike", "Bearer " + MASTER + "x")]


@pytest.fixture(scope="module")
def hostile_gw(sims: Sims) -> Iterator[tuple[GatewayProcess, str]]:
    sims.reset()
    cfg = base_config(sims)
    cfg["models"] = [{"card": MODEL, "n_ctx": 1024, "max_queue": 8, "default_max_tokens": 16}]
    cfg["routes"].append({"name": "gpt-only", "deployments": ["gpt"]})
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "LLM_GATEWAY_MASTER_KEY": MASTER}
    with GatewayProcess(cfg, env=env, require_ready=False) as g:
        deadline = time.monotonic() + 120  # wait for the model itself (a dead upstream only degrades /ready)
        while httpx.get(f"{g.root_url}/ready", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        timeout=5).json()["backends"][MODEL]["state"] != "ready":
            assert time.monotonic() < deadline, "the local model did not load"
            time.sleep(0.1)
        key = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                         json={"alias": "tenant-a"}, timeout=10).json()["key"]
        yield g, key
    sims.reset()


def send(g: GatewayProcess, key: str, case: Case, route: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", **case.headers}
    if isinstance(case.body, bytes):
        return httpx.post(f"{g.base_url}{case.path}", content=case.body.replace(b"{", b'{"model": "%s", ' %
                                                                                 route.encode(), 1),
                          headers={"content-type": "application/json", **headers}, timeout=30)
    return httpx.post(f"{g.base_url}{case.path}", json={"model": route, **case.body}, headers=headers, timeout=30)


def assert_error_shape(r: httpx.Response, case: Case) -> None:
    allowed = case.status if isinstance(case.status, tuple) else (case.status,)
    assert r.status_code in allowed, (case.name, r.status_code, r.text[:300])
    assert r.status_code < 500, (case.name, r.text[:300])
    if r.status_code < 400:
        return
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if case.code is not None:
        assert body["error"]["code"] == case.code, (case.name, body)
    if case.param is not None:  # the field itself, or a part of it (messages[0].role)
        param = body["error"]["param"] or ""
        assert param == case.param or param.startswith((case.param + "[", case.param + ".")), (case.name, body)
    assert "Traceback" not in r.text and 'File "' not in r.text


def assert_no_secret(r: httpx.Response) -> None:
    text = r.text + json.dumps(dict(r.headers))
    for secret in SECRETS:
        assert secret not in text, "a secret reached the client"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_a_clean_client_error(hostile_gw: tuple[GatewayProcess, str], case: Case) -> None:
    g, key = hostile_gw
    for route in case.routes:
        for _ in range(2):  # twice: enough to have opened a breaker before this was fixed
            r = send(g, key, case, route)
            assert_error_shape(r, case)
            assert_no_secret(r)


def test_after_the_hostile_cases_every_breaker_is_closed_and_others_are_served(
        hostile_gw: tuple[GatewayProcess, str]) -> None:
    g, _ = hostile_gw
    deployments = httpx.get(f"{g.root_url}/admin/deployments", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=10).json()
    for name, dep in deployments["deployments"].items():
        if name != "dead":  # the route to nowhere is down by design
            assert dep["breaker"]["state"] == "closed" and dep["failures"] == 0, (name, dep)
    for route in ROUTES:
        r = httpx.post(f"{g.base_url}/chat/completions", headers={"Authorization": f"Bearer {MASTER}"}, timeout=60,
                       json={"model": route, "messages": MSGS, "max_tokens": 4})
        assert r.status_code == 200, (route, r.text)


def test_upstream_messages_never_carry_the_upstream_key(hostile_gw: tuple[GatewayProcess, str], sims: Sims) -> None:
    """Some OpenAI-compatible servers quote the Authorization header in their errors: the client (and the
    log) must get the message without the gateway's key for that upstream."""
    g, key = hostile_gw
    quoted = f"Invalid header 'Authorization: Bearer {OPENAI_KEY}' (key {OPENAI_KEY})"
    sims.gpt.add_fault(Fault.status(400, message=quoted))
    r = httpx.post(f"{g.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                   json={"model": "gpt-only", "messages": MSGS})
    assert r.status_code == 400 and "Invalid header" in r.json()["error"]["message"], r.text
    assert_no_secret(r)
    sims.gpt.add_fault(Fault.in_band_error(after_chunks=2, message=quoted))
    with httpx.stream("POST", f"{g.base_url}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "gpt-only", "messages": MSGS, "stream": True}, timeout=30) as s:
        text = "".join(s.iter_text())
    assert '"error"' in text and OPENAI_KEY not in text, text[-300:]
    sims.gpt.clear_faults()
    log = g.log_path.read_text(errors="replace")
    for secret in SECRETS:
        assert secret not in log, "a secret reached the log"


@pytest.mark.parametrize("name,value", AUTH_VARIANTS, ids=[a[0] for a in AUTH_VARIANTS])
def test_authorization_header_variants(hostile_gw: tuple[GatewayProcess, str], name: str, value: str | None) -> None:
    g, key = hostile_gw
    headers = {} if value is None else {"Authorization": value.format(key=key)}
    r = httpx.post(f"{g.base_url}/chat/completions", headers=headers, timeout=30,
                   json={"model": "chat-default", "messages": MSGS})
    if name in ("lower-bearer", "extra-spaces"):  # the scheme is case-insensitive; spaces around the token go
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (name, r.text)
    assert_no_secret(r)
    assert key not in r.text
