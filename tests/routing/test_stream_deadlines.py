"""A stream's own deadlines: `first_token_s` (to the first content) and `idle_s` (between chunks), and
`total_s` for the whole stream.

README (Routing and failover, timeouts): a first token later than `first_token_s`, or a gap longer than
`idle_s` before any content, fails over before a byte reaches the client; a gap past `idle_s` once content
was relayed is a broken stream (continued elsewhere, or an in-band error and `[DONE]`); past `total_s` a
stream ends with an in-band timeout error and `[DONE]`. Unset, they change nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import httpx
import pytest

from tests.routing_env import Sims, admin, base_config, sims, start_gateway  # noqa: F401  (fixture)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Tell me about foxes"}]
EXPECTED = canonical_reply(MSGS)
QUICK_RETRY = {"max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.05}
# read_s far above every deadline here: what cuts a stream is the deadline under test, never the socket.
SLOW_SOCKET = {"connect_s": 1.0, "read_s": 30.0, "total_s": 20.0}
# What comes on top of a deadline: the gateway's and the client's overhead on a machine that may be busy.
# Far below what a missed deadline costs (the stall of 6 s, or a drip of 8.5 s).
MARGIN_S = 1.5
STALL_S = 6.0

ROUTES: list[dict[str, Any]] = [
    {"name": "first-token", "deployments": ["a", "b"], "retry": QUICK_RETRY,
     "timeouts": {**SLOW_SOCKET, "first_token_s": 1.5}},
    {"name": "first-token-5", "deployments": ["a", "b"], "retry": QUICK_RETRY,
     "timeouts": {**SLOW_SOCKET, "total_s": 40.0, "first_token_s": 5.0}},
    {"name": "first-token-patient", "deployments": ["a-patient", "b"], "retry": QUICK_RETRY,
     "timeouts": {**SLOW_SOCKET, "first_token_s": 1.5}},
    {"name": "idle", "deployments": ["a", "b"], "retry": QUICK_RETRY, "timeouts": {**SLOW_SOCKET, "idle_s": 1.0}},
    {"name": "idle-no-continue", "deployments": ["a", "b"], "retry": QUICK_RETRY, "stream_continuation": False,
     "timeouts": {**SLOW_SOCKET, "idle_s": 1.0}},
    {"name": "no-deadlines", "deployments": ["a", "b"], "retry": QUICK_RETRY, "timeouts": SLOW_SOCKET},
    {"name": "total", "deployments": ["a", "b"], "retry": QUICK_RETRY,
     "timeouts": {"connect_s": 1.0, "read_s": 30.0, "total_s": 2.5}},
]


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    config = base_config(sims)
    config["deployments"].append({"name": "a-patient", "provider": "vllm-a", "model": "vllm-model",
                                  "timeouts": {"first_token_s": 5.0}})
    config["routes"] += ROUTES
    config["breaker"] = {"failure_threshold": 50, "cooldown_s": 30.0, "min_requests": 50}  # never in the way
    with start_gateway(sims, config) as g:
        yield g
    sims.reset()


@dataclass
class Streamed:
    status: int
    headers: httpx.Headers
    elapsed: float  # from sending the request to the end of the answer
    frames: list[Any] = field(default_factory=list)  # parsed JSON chunks, and "[DONE]"
    arrived: list[float] = field(default_factory=list)  # when each frame arrived, from sending the request

    @property
    def text(self) -> str:
        return "".join((c.get("delta") or {}).get("content") or "" for f in self.frames if isinstance(f, dict)
                       for c in f.get("choices") or [])

    @property
    def errors(self) -> list[dict]:
        return [f["error"] for f in self.frames if isinstance(f, dict) and "error" in f]

    @property
    def longest_gap(self) -> float:
        return max((b - a for a, b in zip(self.arrived, self.arrived[1:])), default=0.0)


def ask(g: GatewayProcess, route: str, stream: bool = True) -> Streamed:
    started = time.monotonic()
    body = {"model": route, "messages": MSGS, "stream": stream}
    with httpx.stream("POST", f"{g.base_url}/chat/completions", json=body, timeout=60) as r:
        out = Streamed(r.status_code, r.headers, 0.0)
        if r.status_code != 200 or not stream:
            out.frames.append(json.loads(r.read()))
        else:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out.arrived.append(time.monotonic() - started)
                    out.frames.append("[DONE]" if line == "data: [DONE]" else json.loads(line[6:]))
    out.elapsed = time.monotonic() - started
    return out


def model_calls(sim: Any) -> list[dict]:
    return [r.body for r in sim.requests if r.path == "/v1/chat/completions"]


def deployment(g: GatewayProcess, name: str) -> dict:
    return admin(g, "GET", "/deployments").json()["deployments"][name]


def assert_one_clean_stream(s: Streamed) -> None:
    assert s.status == 200 and s.frames[-1] == "[DONE]" and not s.errors, s.frames
    assert s.text == EXPECTED
    chunks = [f for f in s.frames if isinstance(f, dict)]
    assert len({c["id"] for c in chunks}) == 1, "one stream, one id"
    assert sum(1 for c in chunks for ch in c["choices"] if (ch.get("delta") or {}).get("role")) == 1


# -- first_token_s ---------------------------------------------------------------------------------------------


def test_a_late_first_token_fails_over_before_the_client_sees_a_byte(gw: GatewayProcess, sims: Sims) -> None:
    """a sends its headers and role chunk at once, its first token after 6 s: at 1.5 s b answers instead."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=STALL_S))
    s = ask(gw, "first-token")
    assert_one_clean_stream(s)
    assert (s.headers["x-gateway-deployment"], s.headers["x-gateway-attempts"]) == ("b", "2")
    assert 1.5 - 0.1 <= s.arrived[0] <= 1.5 + MARGIN_S, f"first frame after {s.arrived[0]:.2f}s"
    assert s.elapsed <= 1.5 + MARGIN_S, f"{s.elapsed:.2f}s"
    assert not model_calls(sims.b)[0].get("continue_final_message"), "a fresh answer, not a continuation"
    a = deployment(gw, "a")
    assert (a["failures"], a["last_error"]) == (1, "504 first_token_timeout"), "counted against a"


def test_the_issues_case_a_first_token_after_20_s_under_a_5_s_deadline(gw: GatewayProcess, sims: Sims) -> None:
    """The case as the issue measured it: headers at once, the first token after 20 s (21 s waited before)."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=20.0))
    s = ask(gw, "first-token-5")
    assert_one_clean_stream(s)
    assert s.headers["x-gateway-deployment"] == "b"
    assert 5.0 - 0.1 <= s.arrived[0] <= 5.0 + MARGIN_S and s.elapsed <= 5.0 + MARGIN_S, f"{s.elapsed:.2f}s"
    print(f"first token after 20 s, first_token_s 5: answered in {s.elapsed:.2f}s")


def test_a_deployments_own_first_token_deadline_overrides_the_routes(gw: GatewayProcess, sims: Sims) -> None:
    """a-patient allows itself 5 s (the route 1.5 s): its first token after 3 s is waited for."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=3.0))
    s = ask(gw, "first-token-patient")
    assert_one_clean_stream(s)
    assert s.headers["x-gateway-deployment"] == "a-patient"
    assert s.elapsed >= 3.0 - 0.1
    assert not model_calls(sims.b)


def test_the_first_token_deadline_does_not_cut_a_plain_answer(gw: GatewayProcess, sims: Sims) -> None:
    """Not streamed, the content is the whole answer: read_s and total_s bound it, not first_token_s."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=3.0))
    s = ask(gw, "first-token", stream=False)
    assert s.status == 200 and s.headers["x-gateway-deployment"] == "a", s.frames
    assert s.frames[0]["choices"][0]["message"]["content"] == EXPECTED
    assert s.elapsed >= 3.0 - 0.1


def test_without_stream_deadlines_a_late_first_token_is_waited_for(gw: GatewayProcess, sims: Sims) -> None:
    """Unset, as before: only read_s (30 s here) bounds the wait, and a answers after its 3 s."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=3.0))
    s = ask(gw, "no-deadlines")
    assert_one_clean_stream(s)
    assert s.headers["x-gateway-deployment"] == "a"
    assert s.arrived[0] < 1.0, "the role chunk is relayed at once"
    assert s.longest_gap >= 3.0 - 0.1
    assert not model_calls(sims.b)


# -- idle_s ----------------------------------------------------------------------------------------------------


def test_a_stall_before_any_content_fails_over_invisibly(gw: GatewayProcess, sims: Sims) -> None:
    """Role chunk, then nothing: the role chunk was held back, so b answers as if a had sent nothing."""
    sims.a.add_fault(Fault.stall(after_chunks=1, seconds=STALL_S))
    s = ask(gw, "idle-no-continue")  # no continuation needed: nothing had reached the client
    assert_one_clean_stream(s)
    assert (s.headers["x-gateway-deployment"], s.headers["x-gateway-attempts"]) == ("b", "2")
    assert 1.0 - 0.1 <= s.elapsed <= 1.0 + MARGIN_S, f"{s.elapsed:.2f}s"
    assert deployment(gw, "a")["last_error"] == "504 stream_idle_timeout"


def test_a_stall_mid_stream_is_continued_by_the_fallback(gw: GatewayProcess, sims: Sims) -> None:
    """Role and two pieces from a, then 6 s of silence: after 1 s b continues the message."""
    sims.a.add_fault(Fault.stall(after_chunks=3, seconds=STALL_S))
    s = ask(gw, "idle")
    assert_one_clean_stream(s)
    continued = model_calls(sims.b)
    assert continued and continued[0]["continue_final_message"] is True
    assert continued[0]["messages"][-1]["role"] == "assistant"
    assert 1.0 - 0.1 <= s.longest_gap <= 1.0 + MARGIN_S, f"longest gap {s.longest_gap:.2f}s"
    assert s.elapsed <= 1.0 + MARGIN_S, f"{s.elapsed:.2f}s"
    a = deployment(gw, "a")
    assert (a["failures"], a["last_error"]) == (1, "504 stream_idle_timeout"), "counted against a"


def test_a_stall_mid_stream_without_continuation_ends_in_band(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.stall(after_chunks=3, seconds=STALL_S))
    s = ask(gw, "idle-no-continue")
    assert s.status == 200 and s.frames[-1] == "[DONE]"
    assert [(e["type"], e["code"]) for e in s.errors] == [("timeout_error", "stream_idle_timeout")]
    assert isinstance(s.frames[-2], dict) and "error" in s.frames[-2], "the error, then [DONE]"
    assert s.text and EXPECTED.startswith(s.text) and s.text != EXPECTED, "the part a sent, never more"
    assert not any(c.get("finish_reason") for f in s.frames if isinstance(f, dict) for c in f.get("choices") or [])
    assert 1.0 - 0.1 <= s.elapsed <= 1.0 + MARGIN_S, f"{s.elapsed:.2f}s"
    assert not model_calls(sims.b)


# -- total_s ---------------------------------------------------------------------------------------------------


def test_total_s_ends_a_slow_dripping_stream(gw: GatewayProcess, sims: Sims) -> None:
    """A chunk every 0.5 s (8.5 s in all) under total_s 2.5: ended in-band at 2.5 s, not continued."""
    sims.a.add_fault(Fault.chunk_delay(0.5))
    s = ask(gw, "total")
    assert s.status == 200 and s.frames[-1] == "[DONE]"
    assert [(e["type"], e["code"]) for e in s.errors] == [("timeout_error", "timeout")]
    assert s.text and s.text != EXPECTED
    assert 2.5 - 0.1 <= s.elapsed <= 2.5 + MARGIN_S, f"{s.elapsed:.2f}s"
    assert not model_calls(sims.b), "the route's time is up: nothing left to continue in"
    assert deployment(gw, "a")["failures"] == 0, "a long answer says nothing against the deployment"
