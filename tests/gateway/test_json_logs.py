"""`logging.format: json`: every line the gateway writes to stderr is one JSON object (its own loggers',
uvicorn's, the request lines), with the request's id on the lines written while it is served, tracebacks as
one string field, and nothing secret. The default stays readable text."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway import logsetup, observe
from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, base_config, sims  # noqa: F401
from tests.server import ROOT, GatewayProcess
from tests.sim import Fault
from tests.waiting import wait_until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
MASTER = "sk-master-json-logs-0123456789"


def record(msg: str, *args: Any, exc: bool = False, name: str = "llm_gateway.routing") -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("the upstream said sk-live-abcdefgh12345678")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, exc_info)


def test_an_event_line_is_one_json_object_with_the_request_and_no_secret() -> None:
    observe.own_secrets("my-own-admin-secret")
    token = observe.current_request_id.set("req-42")
    try:
        out = logsetup.JsonFormatter().format(record("deployment %s failed, key %s, admin %s", "a",
                                                     "sk-abcdefgh12345678", "my-own-admin-secret", exc=True))
    finally:
        observe.current_request_id.reset(token)
        observe.own_secrets()
    assert "\n" not in out
    line = json.loads(out)
    assert (line["event"], line["level"], line["logger"], line["request_id"]) == \
        ("log", "warning", "llm_gateway.routing", "req-42")
    assert line["message"] == "deployment a failed, key [REDACTED], admin [REDACTED]"
    assert line["exc_info"].startswith("Traceback (most recent call last)") and "ValueError" in line["exc_info"]
    assert "sk-live-abcdefgh12345678" not in out and "[REDACTED]" in line["exc_info"]
    assert isinstance(line["ts"], float)


def test_outside_a_request_a_line_has_no_request_id() -> None:
    line = json.loads(logsetup.JsonFormatter().format(record("Started server process [%d]", 7, name="uvicorn.error")))
    assert line["message"] == "Started server process [7]" and line["logger"] == "uvicorn.error"
    assert "request_id" not in line and "exc_info" not in line and "trace_id" not in line


def test_uvicorn_keeps_its_own_format_unless_json_is_asked_for() -> None:
    from uvicorn.config import LOGGING_CONFIG

    assert logsetup.uvicorn_options("text") == {}
    config = logsetup.uvicorn_options("json")["log_config"]
    assert set(config["formatters"]) == set(LOGGING_CONFIG["formatters"])
    assert all(f == {"()": "gateway.logsetup.JsonFormatter"} for f in config["formatters"].values())
    assert config["loggers"] == LOGGING_CONFIG["loggers"] and config["handlers"] == LOGGING_CONFIG["handlers"]
    assert LOGGING_CONFIG["formatters"]["default"]["()"] == "uvicorn.logging.DefaultFormatter"  # not changed


def test_the_format_is_text_unless_configured() -> None:
    from routing.config import GatewayConfig

    assert GatewayConfig.model_validate({}).logging.format == "text"
    assert GatewayConfig.model_validate({"logging": {"format": "json"}}).logging.format == "json"
    with pytest.raises(ValueError):
        GatewayConfig.model_validate({"logging": {"format": "xml"}})


UNCAUGHT = """
import threading, warnings
from gateway import logsetup
logsetup.configure("info", fmt="json")
warnings.warn("a deprecated thing")
t = threading.Thread(target=lambda: 1 / 0, name="worker-x")
t.start(); t.join()
raise RuntimeError("failed with sk-abcdefgh12345678")
"""


@pytest.mark.process
def test_warnings_and_uncaught_exceptions_are_json_lines_too() -> None:
    done = subprocess.run([sys.executable, "-c", UNCAUGHT], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1
    lines = [json.loads(x) for x in done.stderr.splitlines()]  # fails on any line that is not JSON
    warned, thread, main = lines
    assert warned["logger"] == "py.warnings" and "a deprecated thing" in warned["message"]
    assert thread["level"] == "critical" and "worker-x" in thread["message"]
    assert "ZeroDivisionError" in thread["exc_info"]
    assert main["level"] == "critical" and "RuntimeError: failed with [REDACTED]" in main["exc_info"]
    assert "sk-abcdefgh12345678" not in done.stderr


class SplitGateway(GatewayProcess):
    """A gateway whose stderr is kept apart from its stdout (where the CLI prints its banner), and read once
    the process has ended, its shutdown lines included."""

    def __enter__(self) -> "SplitGateway":
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self.stderr_path = Path(self._dir.name) / "stderr.log"
        self._log = self.log_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config_path), "--port", str(self.port),
             *self.extra_args], cwd=ROOT, stdout=self._log, stderr=self._err, env=self._environment())
        try:
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> str:
        """Stop it (SIGTERM: a graceful shutdown) and return all it wrote to stderr."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)
        return self.stderr()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._err.close()


@pytest.mark.process
def test_with_json_every_stderr_line_of_a_gateway_run_is_json(sims: Sims) -> None:  # noqa: F811
    sims.reset()
    cfg = {**base_config(sims), "logging": {"format": "json"}}
    env = {"SIM_OPENAI_KEY": OPENAI_KEY, "SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY,
           "LLM_GATEWAY_MASTER_KEY": MASTER}
    with SplitGateway(cfg, env=env, require_ready=False, extra_args=["--access-log"]) as g:
        sims.a.add_fault(Fault.status(503))  # a fails: the router logs a warning while the request is served
        auth = {"Authorization": f"Bearer {MASTER}", "x-request-id": "json-logs-1",
                "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"}
        r = httpx.post(f"{g.base_url}/chat/completions", headers=auth, timeout=30,
                       json={"model": "chat-default", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert httpx.post(f"{g.base_url}/chat/completions", headers={"Authorization": "Bearer sk-gw-wrong"},
                          json={"model": "chat-default", "messages": []}).status_code == 401
        wait_until(lambda: '"request_id":"json-logs-1"' in g.stderr().replace(" ", ""), timeout=10,
                   what="the request's log line")
        text = g.stop()
        out = g.logs(None)  # stdout: the CLI's banner, and uvicorn's access lines (JSON too)
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # fails on any line that is not JSON
    assert len(lines) == len(text.splitlines())
    events = [x for x in lines if x.get("event") == "log"]
    requests = [x for x in lines if x.get("event") == "request"]
    assert {x["request_id"] for x in requests} >= {"json-logs-1"} and len(requests) == 2
    loggers = {x["logger"] for x in events}
    assert "uvicorn.error" in loggers and any(n.startswith("llm_gateway") for n in loggers), loggers
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in events)
    [failover] = [x for x in events if "failing over" in x["message"]]
    assert (failover["request_id"], failover["trace_id"], failover["level"]) == ("json-logs-1", TRACE_ID, "warning")
    assert any("Application startup complete" in x["message"] for x in events)
    assert any("Finished server process" in x["message"] for x in events)  # the shutdown's lines too
    access = [json.loads(x) for x in out.splitlines() if "POST /v1/chat/completions" in x]
    assert len(access) == 2 and all(x["logger"] == "uvicorn.access" for x in access)
    assert access[0]["request_id"] == "json-logs-1"
    for secret in (MASTER, ADMIN_KEY, OPENAI_KEY, ANTHROPIC_KEY, "sk-gw-wrong"):
        assert secret not in text
    sims.reset()


@pytest.mark.process
def test_llm_gateway_log_format_json_turns_a_text_config_into_json_lines() -> None:
    """LLM_GATEWAY_LOG_FORMAT overrides `logging.format` as LLM_GATEWAY_LOG_LEVEL overrides `server.log_level`:
    a served gateway whose config says text writes every event line as JSON."""
    with SplitGateway({"models": [], "logging": {"format": "text"}}, env={"LLM_GATEWAY_LOG_FORMAT": "json"},
                      require_ready=False) as g:
        assert httpx.get(f"{g.root_url}/health", timeout=10).status_code == 200
        text = g.stop()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # fails on any line that is not JSON
    events = [x for x in lines if x.get("event") == "log"]
    assert any("Application startup complete" in x["message"] for x in events), text
    assert any("Finished server process" in x["message"] for x in events)


@pytest.mark.process
def test_llm_gateway_log_format_text_wins_over_a_json_config_and_nonsense_is_refused(tmp_path: Path) -> None:
    with SplitGateway({"models": [], "logging": {"format": "json"}}, env={"LLM_GATEWAY_LOG_FORMAT": "text"},
                      require_ready=False) as g:
        text = g.stop()
    assert "Application startup complete" in text
    assert not any(line.startswith("{") for line in text.splitlines()), text
    config = tmp_path / "gateway.yaml"
    config.write_text("models: []\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LLM_GATEWAY_LOG_FORMAT": "xml"})
    assert done.returncode == 2, done.stderr
    assert "error: LLM_GATEWAY_LOG_FORMAT must be 'text' or 'json', not 'xml'" in done.stderr
