"""The route's `total_s`: every attempt, retry and failover of a request happens within it.

README: retries "back off ... all within the route's `total_s`"; `total_s` is "the whole request, all
attempts included"; when every deployment fails the client gets the last error, a 504 `timeout` here.
Deployments that hang (or are merely very slow) must not hold a client past the deadline, whether the
request is streamed (before its first byte, the answer is still a plain HTTP error) or not.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import pytest

from tests.routing_env import Sims, base_config, sims, start_gateway  # noqa: F401  (fixture)
from tests.server import GatewayProcess
from tests.sim import Fault

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Are you there?"}]
QUICK_RETRY = {"max_attempts": 8, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
# The deadline is checked by the gateway's own timer; what comes on top of it is the gateway's overhead and
# the client's, on a machine that may be busy. Generous, and still far below what a broken deadline costs
# (the next attempt's read timeout, or the backend's hang of an hour).
MARGIN_S = 1.5

ROUTES: list[dict[str, Any]] = [
    # Only the deadline can stop these attempts: each would wait 30 s for its first byte.
    {"name": "deadline", "deployments": ["a", "b"], "retry": QUICK_RETRY,
     "timeouts": {"connect_s": 1.0, "read_s": 30.0, "total_s": 2.0}},
    # Each attempt times out on its own after 2 s and fails over: a, then b with 1.5 s left, which the
    # deadline cuts short (an attempt allowed its whole read timeout would end 0.5 s late). A deployment
    # that timed out is not asked again in the same request.
    {"name": "deadline-failover", "deployments": ["a", "b"], "retry": QUICK_RETRY,
     "timeouts": {"connect_s": 1.0, "read_s": 2.0, "total_s": 3.5}},
]


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    config = base_config(sims)
    config["routes"] += ROUTES
    config["breaker"] = {"failure_threshold": 50, "cooldown_s": 30.0, "min_requests": 50}  # never in the way
    with start_gateway(sims, config) as g:
        yield g
    sims.reset()


def total_s(route: str) -> float:
    return next(r for r in ROUTES if r["name"] == route)["timeouts"]["total_s"]


def timed_post(g: GatewayProcess, route: str, stream: bool) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(f"{g.base_url}/chat/completions", timeout=60,
                   json={"model": route, "messages": MSGS, "stream": stream})
    return r, time.monotonic() - started


def model_calls(s: Sims) -> tuple[int, int]:
    return s.a.count("/v1/chat/completions"), s.b.count("/v1/chat/completions")


def assert_deadline_error(r: httpx.Response, elapsed: float, deadline_s: float) -> None:
    assert r.status_code == 504, r.text
    assert r.headers["content-type"].startswith("application/json"), "before the first byte: a plain HTTP error"
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("timeout_error", "timeout"), err
    assert deadline_s - 0.2 <= elapsed <= deadline_s + MARGIN_S, f"{elapsed:.2f}s for a deadline of {deadline_s}s"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("fault", [Fault.hang(), Fault.latency(20.0)], ids=["hang", "slow"])
def test_a_request_to_stuck_deployments_ends_at_the_deadline(gw: GatewayProcess, sims: Sims, fault: Fault,
                                                             stream: bool) -> None:
    sims.a.set_fault(fault)
    sims.b.set_fault(fault)
    r, elapsed = timed_post(gw, "deadline", stream)
    assert_deadline_error(r, elapsed, total_s("deadline"))
    assert model_calls(sims)[0] >= 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_retries_and_failover_stay_within_the_deadline(gw: GatewayProcess, sims: Sims, stream: bool) -> None:
    sims.a.set_fault(Fault.hang())
    sims.b.set_fault(Fault.hang())
    r, elapsed = timed_post(gw, "deadline-failover", stream)
    assert_deadline_error(r, elapsed, total_s("deadline-failover"))
    a, b = model_calls(sims)
    assert (a, b) == (1, 1), f"it failed over, and never asked a silent deployment again: a={a} b={b}"
    assert a + b < QUICK_RETRY["max_attempts"], "the deadline, not max_attempts, ended it"


def test_a_deployment_that_answers_in_time_is_not_cut(gw: GatewayProcess, sims: Sims) -> None:
    """The deadline is the whole request's: a slow first attempt leaves the rest of it to the next one."""
    sims.a.set_fault(Fault.hang())
    sims.b.set_fault(Fault.latency(0.3))
    r, elapsed = timed_post(gw, "deadline-failover", False)
    assert r.status_code == 200, r.text
    assert r.headers["x-gateway-deployment"] == "b" and r.headers["x-gateway-attempts"] == "2"
    assert elapsed < total_s("deadline-failover") + MARGIN_S
