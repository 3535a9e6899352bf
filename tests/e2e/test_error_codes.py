"""Every error `code` the README documents, provoked for real and checked against its table row.

README.md's "Errors" table gives, per row, the status (and whether a `Retry-After` comes with it), the `type` and
the `code`s. `test_each_documented_error_code` provokes each code on a real gateway (the local model, simulated
upstreams, raw sockets) and checks status, header, `type` and `code` against that row;
`test_every_documented_code_is_provoked` fails when the table and PROVOKE disagree, so the two cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn

from backends.llamacpp.host import HOLD_ENV
from tests.conftest import MODEL
from tests.paths import ROOT
from tests.routing_env import ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import GatewayProcess, free_port
from tests.sim import Fault

pytestmark = pytest.mark.e2e

MASTER = "sk-master-error-codes-0123456789"
MSGS = [{"role": "user", "content": "Hi"}]
N_CTX = 4096
# Far more than the local model can write within its request_timeout_s, on any CPU.
LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 4000,
        "temperature": 0, "ignore_eos": True}
NO_CACHE = {"Cache-Control": "no-store"}
REQUEST_TIMEOUT_S = 5  # the local model's request_timeout_s
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 8


# -- the README's table ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Documented:
    status: int
    retry_after: bool
    type: str


def documented_errors() -> dict[str, Documented]:
    """code -> its row in README.md's "### Errors" table (`| status | when | type | code(s) |`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n### Errors\n" in text, "README.md has no '### Errors' section"
    lines = text.split("\n### Errors\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    assert table[0] == ["status", "when", "`type`", "`code`"], table[0]
    out: dict[str, Documented] = {}
    for row in table[2:]:
        assert len(row) == 4, f"a row of the errors table does not have 4 cells: {row}"
        status = re.fullmatch(r"(\d{3})( \+ `Retry-After`)?", row[0])
        etype = re.fullmatch(r"`([a-z_]+)`", row[2])
        codes = re.findall(r"`([a-z_]+)`", row[3])
        assert status and etype and codes, f"unreadable row of the errors table: {row}"
        doc = Documented(int(status.group(1)), bool(status.group(2)), etype.group(1))
        for code in codes:
            assert out.get(code, doc) == doc, f"{code} is in two rows that disagree: {out[code]} and {doc}"
            out[code] = doc
    return out


# -- what came back ----------------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    error: dict[str, Any]

    @classmethod
    def of(cls, r: httpx.Response) -> "Reply":
        body = r.json()
        assert set(body) == {"error"}, r.text
        return cls(r.status_code, {k.lower(): v for k, v in r.headers.items()}, body["error"])

    @classmethod
    def raw(cls, data: bytes) -> "Reply":
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(h.split(":", 1) for h in header_lines)
        return cls(int(status_line.split(" ", 2)[1]), {k.strip().lower(): v.strip() for k, v in headers.items()},
                   json.loads(body)["error"])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


# -- the gateways ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file is missing, a starting engine process waits before it loads (HOLD_ENV)."""
    path = tmp_path_factory.mktemp("hold") / "go"
    path.touch()
    return path


@pytest.fixture(scope="module")
def local_gw(gate: Path) -> Iterator[GatewayProcess]:
    """No keys; the real local model (warmed up before it is ready, so that a small answer is quick), one sequence
    at a time with one queue slot and a 5 s deadline; a route
    whose only deployment cannot be reached; short connection limits."""
    config = {
        "server": {"watch_config": False, "header_timeout_s": HEADER_TIMEOUT_S, "max_connections": MAX_CONNECTIONS,
                   "max_body_bytes": 64 * 1024},
        "models": [{"card": MODEL, "n_ctx": N_CTX, "parallel": 1, "max_queue": 1,
                    "request_timeout_s": REQUEST_TIMEOUT_S}],
        "providers": {"nowhere": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "connect_timeout_s": 0.5}},
        "deployments": [{"name": "dead", "provider": "nowhere", "model": "x"}],
        "routes": [{"name": "dead-end", "deployments": ["dead"], "retry": {"max_attempts": 1}}],
    }
    with GatewayProcess(config, env={HOLD_ENV: str(gate)}) as g:
        yield g


@pytest.fixture(scope="module")
def keyed_gw(sims: Sims) -> Iterator[GatewayProcess]:  # noqa: F811
    sims.reset()
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY}
    # `held`: a route whose concurrency waits are short, so a key over its max_concurrent_requests is told at once.
    cfg = base_config(sims)
    cfg["routes"].append({"name": "held", "deployments": ["a"], "timeouts": {"read_s": 5.0, "queue_s": 0.3}})
    with GatewayProcess(cfg, env=env, require_ready=False) as g:
        yield g


@pytest.fixture(scope="module")
def buggy_url(sims: Sims) -> Iterator[str]:  # noqa: F811
    """An in-process gateway whose one deployment's backend has a bug (it raises KeyError)."""
    from gateway.app import create_app
    from routing.config import GatewayConfig

    saved = os.environ.pop("REDIS_URL", None)
    cfg = GatewayConfig.model_validate({
        "models": [], "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [{"name": "chat", "deployments": ["a"]}]})
    app = create_app(cfg)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "the in-process gateway started")

        async def bug(*_: Any, **__: Any) -> Any:
            raise KeyError("a bug in the gateway")

        app.state.manager.current.deployments["a"].backend.chat = bug
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)
        if saved is not None:
            os.environ["REDIS_URL"] = saved


# -- the local model's state -------------------------------------------------------------------------------------

def engine(g: GatewayProcess) -> dict[str, Any]:
    return httpx.get(f"{g.root_url}/ready", timeout=5).json()["backends"][MODEL]


def idle_and_serving(g: GatewayProcess) -> None:
    """The engine is ready, nothing is running or queued, and a small request is answered. (On CPUs shared with
    other busy processes llama.cpp's threads can slow down far enough for even that to run past the 5 s deadline
    once; it is asked again then.)"""
    def idle() -> bool:
        e = engine(g)
        return e["state"] == "ready" and e["stats"]["busy"] == 0 and e["stats"]["queue_depth"] == 0

    def answers() -> bool:
        wait_for(idle, 60, "the local model is idle and ready")
        r = chat(g, model=MODEL, max_tokens=2)
        assert r.status_code in (200, 504), r.text
        return r.status_code == 200

    wait_for(answers, 60, "a small request is answered")


def chat(g: GatewayProcess | str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    base = g if isinstance(g, str) else g.base_url
    return httpx.post(f"{base}/chat/completions", headers={**NO_CACHE, **(headers or {})}, timeout=30,
                      json={"messages": MSGS, **body})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_key(g: GatewayProcess, **fields: Any) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers=bearer(MASTER), json={"alias": "codes", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def kill_engine(g: GatewayProcess) -> None:
    (instance,) = engine(g)["engines"]
    os.kill(instance["pid"], signal.SIGKILL)


# -- the provocations: code -> the replies that must carry it ----------------------------------------------------

Provoke = Callable[[pytest.FixtureRequest], list[Reply]]


def _invalid_json(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    url = f"{g.base_url}/chat/completions"
    malformed = httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"})
    deep: Any = "x"
    for _ in range(100):  # deeper than server.max_json_depth (64)
        deep = [deep]
    too_deep = httpx.post(url, json={"model": MODEL, "messages": MSGS, "metadata": {"a": deep}})
    return [Reply.of(malformed), Reply.of(too_deep)]


def _invalid_value(req: pytest.FixtureRequest) -> list[Reply]:
    r = chat(req.getfixturevalue("local_gw"), model=MODEL, temperature=9)
    assert r.json()["error"]["param"] == "temperature", r.text
    return [Reply.of(r)]


def _missing_required_parameter(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    r = httpx.post(f"{g.base_url}/chat/completions", json={"model": MODEL})
    assert r.json()["error"]["param"] == "messages", r.text
    return [Reply.of(r)]


def _context_length_exceeded(req: pytest.FixtureRequest) -> list[Reply]:
    return [Reply.of(chat(req.getfixturevalue("local_gw"), model=MODEL, max_tokens=N_CTX + 1))]


def _unsupported_parameter(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    r = httpx.post(f"{g.base_url}/completions", headers=NO_CACHE, timeout=30,
                   json={"model": MODEL, "prompt": "Once", "suffix": "the end", "max_tokens": 2})
    assert r.json()["error"]["param"] == "suffix", r.text
    return [Reply.of(r)]


def _invalid_json_schema(req: pytest.FixtureRequest) -> list[Reply]:
    """A tool whose parameters llama.cpp cannot turn into a grammar (a remote $ref)."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}]
    r = chat(req.getfixturevalue("local_gw"), model=MODEL, tools=tools, tool_choice="required", max_tokens=2)
    assert r.json()["error"]["param"] == "tools[0].function.parameters", r.text
    return [Reply.of(r)]


def _unsupported_content(req: pytest.FixtureRequest) -> list[Reply]:
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    return [Reply.of(chat(req.getfixturevalue("local_gw"), model=MODEL, messages=image))]


def _model_not_found(req: pytest.FixtureRequest) -> list[Reply]:
    return [Reply.of(chat(req.getfixturevalue("local_gw"), model="no-such-model"))]


def _request_timeout(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    with socket.create_connection(("127.0.0.1", g.port), timeout=HEADER_TIMEOUT_S + 10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
        return [Reply.raw(_read_until_closed(s))]


def _read_until_closed(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _request_too_large(req: pytest.FixtureRequest) -> list[Reply]:
    big = [{"role": "user", "content": "x" * (70 * 1024)}]  # server.max_body_bytes is 64 KiB
    return [Reply.of(chat(req.getfixturevalue("local_gw"), model=MODEL, messages=big))]


def _model_overloaded(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    idle_and_serving(g)
    queued: dict[str, int] = {}

    def wait_in_the_queue() -> None:
        with httpx.stream("POST", f"{g.base_url}/chat/completions", json={**LONG, "stream": True}, headers=NO_CACHE,
                          timeout=30) as r:
            queued["status"] = r.status_code

    with httpx.Client(timeout=30) as http:
        running = http.send(http.build_request("POST", f"{g.base_url}/chat/completions", headers=NO_CACHE,
                                               json={**LONG, "stream": True}), stream=True)
        try:
            wait_for(lambda: engine(g)["stats"]["busy"] == 1, 10, "one sequence running")
            waiting = threading.Thread(target=wait_in_the_queue)
            waiting.start()
            wait_for(lambda: g.waiting(MODEL) == 1, 10, "one request queued (by the gateway: A holds the one slot)")
            refused = chat(g, model=MODEL, max_tokens=2)  # no room left
        finally:
            running.close()
        waiting.join(30)
    idle_and_serving(g)
    return [Reply.of(refused)]


def _model_not_ready(req: pytest.FixtureRequest) -> list[Reply]:
    g, gate = req.getfixturevalue("local_gw"), req.getfixturevalue("gate")
    idle_and_serving(g)
    gate.unlink()  # the engine that replaces the killed one waits before loading: the model stays `restarting`
    try:
        kill_engine(g)
        wait_for(lambda: engine(g)["state"] == "restarting", 10, "restarting")
        refused = chat(g, model=MODEL, max_tokens=2)
    finally:
        gate.touch()
    idle_and_serving(g)
    return [Reply.of(refused)]


def _engine_unavailable(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    idle_and_serving(g)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(chat, g, **LONG)
        wait_for(lambda: engine(g)["stats"]["busy"] == 1, 10, "the request is being answered")
        kill_engine(g)  # the engine process dies with the request in it
        died = answer.result(timeout=30)
    idle_and_serving(g)
    return [Reply.of(died)]


def _too_many_connections(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    held = [socket.create_connection(("127.0.0.1", g.port), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        # Until the server has taken in all the held ones a new connection may still be served; they are
        # closed (408) after the header timeout, so this has that long.
        deadline = time.monotonic() + HEADER_TIMEOUT_S / 2
        while True:
            with socket.create_connection(("127.0.0.1", g.port), timeout=10) as extra:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                raw = _read_until_closed(extra)
            if not raw.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                return [Reply.raw(raw)]
    finally:
        for s in held:
            s.close()


def _internal_error(req: pytest.FixtureRequest) -> list[Reply]:
    return [Reply.of(chat(req.getfixturevalue("buggy_url"), model="chat"))]


def _timeout(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    idle_and_serving(g)
    started = time.monotonic()
    r = chat(g, **LONG)
    assert REQUEST_TIMEOUT_S - 0.5 < time.monotonic() - started < REQUEST_TIMEOUT_S + 5
    idle_and_serving(g)
    return [Reply.of(r)]


def _host_not_allowed(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    return [Reply.of(httpx.post(f"{g.base_url}/chat/completions", json={"model": MODEL, "messages": MSGS},
                                headers={"host": "attacker.example"}))]


def _unsupported_media_type(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    body = json.dumps({"model": MODEL, "messages": MSGS})
    return [Reply.of(httpx.post(f"{g.base_url}/chat/completions", content=body, headers={"content-type": t}))
            for t in ("text/plain", "application/x-www-form-urlencoded")]


def _all_deployments_failed(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("local_gw")
    for _ in range(10):  # each failure counts against the one deployment's breaker (it opens at 5)
        r = chat(g, model="dead-end")
        if r.json()["error"]["code"] != "upstream_unavailable":
            return [Reply.of(r)]
    raise AssertionError("the breaker of 'dead' never opened")


def _invalid_api_key(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("keyed_gw")
    return [Reply.of(chat(g, bearer("sk-gw-not-a-key"), model="chat-default")),
            Reply.of(chat(g, model="chat-default"))]


def _model_not_allowed(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("keyed_gw")
    return [Reply.of(chat(g, bearer(new_key(g, models=["claude"])), model="chat-default"))]


def _rate_limit_exceeded(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("keyed_gw")
    key = new_key(g, rpm=1)
    assert chat(g, bearer(key), model="chat-default").status_code == 200
    return [Reply.of(chat(g, bearer(key), model="chat-default"))]


def _insufficient_quota(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("keyed_gw")
    key = new_key(g, budget_usd=0.000001, budget_period="total")  # one gpt-4o-mini answer spends more than this
    assert chat(g, bearer(key), model="gpt-first").status_code == 200
    return [Reply.of(chat(g, bearer(key), model="gpt-first"))]


def _concurrency_limit_exceeded(req: pytest.FixtureRequest) -> list[Reply]:
    g, s = req.getfixturevalue("keyed_gw"), req.getfixturevalue("sims")
    key = new_key(g, max_concurrent_requests=1)
    s.a.set_fault(Fault.latency(1.5))  # the first request holds the key's one place this long
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(chat, g, bearer(key), model="held")
            time.sleep(0.4)
            second = chat(g, bearer(key), model="held")  # waits queue_s (0.3 s) for the place, then 429
            assert first.result().status_code == 200
    finally:
        s.a.clear_faults()
    return [Reply.of(second)]


def _invalid_priority(req: pytest.FixtureRequest) -> list[Reply]:
    g = req.getfixturevalue("keyed_gw")
    return [Reply.of(chat(g, {**bearer(MASTER), "x-gateway-priority": "asap"}, model="chat-default"))]


PROVOKE: dict[str, Provoke] = {
    "invalid_json": _invalid_json,
    "invalid_value": _invalid_value,
    "missing_required_parameter": _missing_required_parameter,
    "context_length_exceeded": _context_length_exceeded,
    "unsupported_parameter": _unsupported_parameter,
    "invalid_json_schema": _invalid_json_schema,
    "unsupported_content": _unsupported_content,
    "model_not_found": _model_not_found,
    "request_timeout": _request_timeout,
    "request_too_large": _request_too_large,
    "model_overloaded": _model_overloaded,
    "model_not_ready": _model_not_ready,
    "engine_unavailable": _engine_unavailable,
    "too_many_connections": _too_many_connections,
    "internal_error": _internal_error,
    "timeout": _timeout,
    "host_not_allowed": _host_not_allowed,
    "unsupported_media_type": _unsupported_media_type,
    "all_deployments_failed": _all_deployments_failed,
    "invalid_api_key": _invalid_api_key,
    "model_not_allowed": _model_not_allowed,
    "rate_limit_exceeded": _rate_limit_exceeded,
    "insufficient_quota": _insufficient_quota,
    "concurrency_limit_exceeded": _concurrency_limit_exceeded,
    "invalid_priority": _invalid_priority,
}


def test_every_documented_code_is_provoked() -> None:
    documented = set(documented_errors())
    assert not documented - set(PROVOKE), f"README documents codes no test provokes: {documented - set(PROVOKE)}"
    assert not set(PROVOKE) - documented, f"codes provoked but not in README's errors table: " \
                                          f"{set(PROVOKE) - documented}"


@pytest.mark.parametrize("code", list(PROVOKE))
def test_each_documented_error_code(code: str, request: pytest.FixtureRequest) -> None:
    doc = documented_errors().get(code)
    assert doc is not None, f"{code} is not in README.md's errors table"
    replies = PROVOKE[code](request)
    assert replies
    for reply in replies:
        assert set(reply.error) == {"message", "type", "param", "code"}, reply.error
        assert (reply.status, reply.error["type"], reply.error["code"]) == (doc.status, doc.type, code), reply
        assert reply.error["message"], reply
        if doc.retry_after:
            assert int(reply.headers["retry-after"]) >= 1, reply.headers
