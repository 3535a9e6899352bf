"""Retry before failover (`retry.retry_same`) and context-window fallbacks, against the simulators.

README, "Routing and failover": a retryable error is retried on the same deployment up to `retry_same` times
(after its Retry-After, capped), never a timeout, within `max_attempts` and `total_s`; a prompt too long for a
deployment's context goes on to the next deployment with a larger one, and only when none is left does the
client get the 400 `context_length_exceeded`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.routing_env import Sims, admin, base_config, sims, start_gateway  # noqa: F401  (fixture)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Tell me about foxes"}]
LONG = [{"role": "user", "content": " ".join(["fox"] * 60)}]  # 60 words: over a sim window of 30
CHAT = "/v1/chat/completions"
FAST = {"connect_s": 1.0, "read_s": 1.0, "total_s": 10.0}
RETRY = {"max_attempts": 3, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "retry_after_cap_s": 2.0}
MARGIN_S = 1.5  # the gateway's and the client's own time on a busy machine

DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "a-small", "provider": "vllm-a", "model": "vllm-model", "context_length": 2000},
    {"name": "gpt-small", "provider": "openai", "model": "sim-model", "context_length": 2000},
    {"name": "b-big", "provider": "vllm-b", "model": "vllm-model", "context_length": 8000},
]
ROUTES: list[dict[str, Any]] = [
    {"name": "retry-once", "deployments": ["a", "b"], "timeouts": FAST, "retry": {**RETRY, "retry_same": 1}},
    {"name": "retry-never", "deployments": ["a", "b"], "timeouts": FAST, "retry": RETRY},
    {"name": "retry-solo", "deployments": ["a"], "timeouts": FAST, "retry": {**RETRY, "retry_same": 2}},
    {"name": "retry-bounded", "deployments": ["a", "b"], "timeouts": FAST, "retry": {**RETRY, "retry_same": 5}},
    {"name": "retry-deadline", "deployments": ["a", "b"], "timeouts": {**FAST, "total_s": 1.5},
     "retry": {**RETRY, "retry_same": 5, "max_attempts": 10}},
    {"name": "ctx", "deployments": ["a-small", "gpt-small", "b-big"], "timeouts": FAST,
     "retry": {**RETRY, "retry_same": 2}},
    {"name": "ctx-none", "deployments": ["gpt-small", "a-small"], "timeouts": FAST,
     "retry": {**RETRY, "retry_same": 2}},
]


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    config = base_config(sims)
    config["deployments"] += DEPLOYMENTS
    config["routes"] += ROUTES
    config["breaker"] = {"failure_threshold": 50, "cooldown_s": 30.0, "min_requests": 50}  # never in the way
    with start_gateway(sims, config) as g:
        yield g
    sims.reset()


def timed_post(g: GatewayProcess, model: str, messages: list[dict] = MSGS,
               **extra: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(f"{g.base_url}/chat/completions", json={"model": model, "messages": messages, **extra}, timeout=30)
    return r, time.monotonic() - started


def answer_text(r: httpx.Response) -> str:
    """The answer's text, from a JSON body or the content of every SSE chunk."""
    if not r.headers["content-type"].startswith("text/event-stream"):
        return r.json()["choices"][0]["message"]["content"]
    chunks = [orjson.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def calls(s: Sims) -> tuple[int, int, int]:
    return s.a.count(CHAT), s.b.count(CHAT), s.gpt.count(CHAT)


# -- retry before failover -----------------------------------------------------------------------------------

def test_a_429_with_retry_after_is_retried_on_the_primary_after_the_wait(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(429, retry_after=1))
    r, elapsed = timed_post(gw, "retry-once")
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == canonical_reply(MSGS)
    assert r.headers["x-gateway-deployment"] == "a" and r.headers["x-gateway-attempts"] == "2"
    assert calls(sims)[:2] == (2, 0)
    assert 1.0 <= elapsed < 1.0 + MARGIN_S, f"{elapsed:.2f}s; Retry-After was 1 s"


def test_without_retry_same_the_fallback_answers_at_once(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(429, retry_after=1))
    r, elapsed = timed_post(gw, "retry-never")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"
    assert calls(sims)[:2] == (1, 1)
    assert elapsed < 1.0, f"{elapsed:.2f}s: it waited for the primary's Retry-After"


def test_a_single_500_is_retried_on_the_primary(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(500))
    r, elapsed = timed_post(gw, "retry-once")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "a"
    assert r.headers["x-gateway-attempts"] == "2" and calls(sims)[:2] == (2, 0)
    assert elapsed < 1.0


def test_a_second_failure_moves_on_to_the_fallback(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(500), times=2)
    r, _ = timed_post(gw, "retry-once")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"
    assert r.headers["x-gateway-attempts"] == "3" and calls(sims)[:2] == (2, 1)


def test_a_timeout_is_never_retried_on_the_same_deployment(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.hang(), times=3)
    r, elapsed = timed_post(gw, "retry-once")
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"
    assert calls(sims)[:2] == (1, 1)
    assert elapsed < 1.0 + MARGIN_S, f"{elapsed:.2f}s for one read timeout of 1 s"
    r, elapsed = timed_post(gw, "retry-solo")  # alone in its route: the client gets the 504 after one try
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert calls(sims)[0] == 2
    assert elapsed < 1.0 + MARGIN_S


def test_max_attempts_still_bounds_the_retries(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.status(500))
    sims.b.set_fault(Fault.status(500))
    r, _ = timed_post(gw, "retry-bounded")
    assert r.status_code == 500
    assert calls(sims)[:2] == (3, 0), "retry_same 5, max_attempts 3: three attempts on a, all told"


def test_total_s_still_bounds_the_retries(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.status(429, retry_after=1))
    sims.b.set_fault(Fault.status(429, retry_after=1))
    r, elapsed = timed_post(gw, "retry-deadline")
    assert r.status_code == 429, r.text
    a, b, _ = calls(sims)
    assert (a, b) == (2, 1), f"a, a after 1 s, then b: the next waits would pass total_s (a={a} b={b})"
    assert elapsed < 1.5 + MARGIN_S, f"{elapsed:.2f}s for a total_s of 1.5 s"


# -- context-window fallbacks --------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_prompt_too_long_for_the_primary_goes_to_a_larger_context(gw: GatewayProcess, sims: Sims,
                                                                    stream: bool) -> None:
    sims.a.context_window = 30  # a-small's vLLM refuses the prompt; gpt-small's known context is no larger
    r, elapsed = timed_post(gw, "ctx", LONG, stream=stream)
    assert r.status_code == 200, r.text
    assert answer_text(r) == canonical_reply(LONG)
    assert r.headers["x-gateway-deployment"] == "b-big" and r.headers["x-gateway-attempts"] == "2"
    assert calls(sims) == (1, 1, 0), "never retried on a-small, never sent to gpt-small"
    assert elapsed < 1.0
    state = admin(gw, "GET", "/deployments").json()["deployments"]["a-small"]
    assert state["breaker"]["state"] == "closed" and state["breaker"]["consecutive_failures"] == 0
    assert state["breaker"]["recent_failure_rate"] == 0.0 and state["failures"] == 0


def test_with_no_larger_context_left_the_client_gets_the_400(gw: GatewayProcess, sims: Sims) -> None:
    sims.gpt.context_window = 30  # OpenAI's own code; a-small's known context is no larger than gpt-small's
    r, elapsed = timed_post(gw, "ctx-none", LONG)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
    assert calls(sims) == (0, 0, 1)
    assert elapsed < 1.0


def test_vllms_context_400_is_named_for_the_client_too(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.context_window = sims.b.context_window = 30  # both vLLMs refuse it, in vLLM's words
    r, _ = timed_post(gw, "ctx", LONG)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    assert calls(sims) == (1, 1, 0), "a-small, then b-big; gpt-small skipped"
