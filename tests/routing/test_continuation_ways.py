"""A stream cut midway, continued by each way a fallback has: prefill, restart after a refused prefill, restart
on an OpenAI-compatible API, and a restart whose answer differs (simulators; the answers are deterministic)."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import orjson
import pytest

from tests.routing_env import Sims, base_config, sims, start_gateway  # noqa: F401  (fixtures)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply

pytestmark = pytest.mark.process  # gateway processes

MSGS = [{"role": "user", "content": "Tell me about foxes"}]
EXPECTED = canonical_reply(MSGS)  # 15 pieces: "Reply", " to:", " Tell", ...
CUT = 8  # the role chunk and 7 pieces reach the client: "Reply to: Tell me about foxes. The"
# The two ways a stream breaks after content: cut (the connection drops) and stalled (the upstream goes
# quiet for 5 s, past the routes' read_s of 1 s, and would go on later: its late rest must never show).
BREAKS = pytest.mark.parametrize("broken", [Fault.cut_stream(after_chunks=CUT), Fault.stall(after_chunks=CUT,
                                                                                             seconds=5.0)],
                                 ids=["cut", "stall"])


@pytest.fixture(scope="module")
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    config = base_config(sims)
    fast = {"connect_s": 1.0, "read_s": 1.0, "total_s": 10.0}
    retry = {"max_attempts": 3, "backoff_base_s": 0.02, "backoff_max_s": 0.2}
    config["deployments"] += [
        {"name": "gpt-stops-early", "provider": "openai", "model": "sim-model", "params": {"stop": "brown"}},
        {"name": "b-never", "provider": "vllm-b", "model": "vllm-model", "continuation": "none"},
        {"name": "b-restarts", "provider": "vllm-b", "model": "vllm-model", "continuation": "restart"},
        {"name": "b-told", "provider": "vllm-b", "model": "vllm-model", "continuation": "instruction"},
    ]
    config["routes"] += [{"name": name, "deployments": deps, "timeouts": fast, "retry": retry} for name, deps in [
        ("to-vllm", ["a", "b"]), ("to-gpt", ["a", "gpt"]), ("to-gpt-stopping", ["a", "gpt-stops-early"]),
        ("to-nobody", ["a", "b-never"]), ("to-b-restarting", ["a", "b-restarts"]),
        ("to-b-told", ["a", "b-told"])]]
    with start_gateway(sims, config) as g:
        yield g
    sims.reset()


@pytest.fixture(autouse=True)
def fresh(sims: Sims) -> Iterator[None]:
    sims.reset()
    yield
    sims.reset()


def stream(gw: GatewayProcess, route: str) -> tuple[list[dict[str, Any]], bool, float]:
    """The stream's parsed chunks, whether it ended with [DONE], and the seconds it took."""
    started = time.monotonic()
    raw = httpx.post(f"{gw.base_url}/chat/completions", timeout=30, json={
        "model": route, "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}).text
    took = time.monotonic() - started
    datas = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    done = bool(datas) and datas[-1] == "[DONE]"
    return [orjson.loads(d) for d in datas if d != "[DONE]"], done, took


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


def finishes(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]


def model_calls(sim) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [r.body for r in sim.requests if r.path == "/v1/chat/completions"]


def assert_whole(chunks: list[dict[str, Any]], done: bool) -> None:
    """Exactly the uninterrupted answer, as one stream: one id, one role chunk, one finish, [DONE], no error."""
    assert text_of(chunks) == EXPECTED
    assert len({c["id"] for c in chunks}) == 1, "one stream, one id"
    assert len([c for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("role")]) == 1
    assert finishes(chunks) == ["stop"] and done
    assert not any("error" in c for c in chunks)


@BREAKS
def test_a_prefill_capable_fallback_continues(gw: GatewayProcess, sims: Sims, broken: Fault) -> None:
    sims.a.add_fault(broken)
    chunks, done, took = stream(gw, "to-vllm")
    assert_whole(chunks, done)
    calls = model_calls(sims.b)
    assert len(calls) == 1 and calls[0]["continue_final_message"] is True
    assert calls[0]["messages"][-1] == {"role": "assistant", "content": "Reply to: Tell me about foxes. The"}
    print(f"prefill: {took:.2f}s")


@BREAKS
def test_a_refused_prefill_restarts_on_the_same_deployment_and_is_spliced_on(gw: GatewayProcess, sims: Sims, broken: Fault) -> None:
    sims.a.add_fault(broken)
    sims.b.refuse_prefill = True
    chunks, done, took = stream(gw, "to-vllm")
    assert_whole(chunks, done)
    calls = model_calls(sims.b)
    assert [c.get("continue_final_message") for c in calls] == [True, None], "prefill refused, then a restart"
    assert calls[1]["messages"] == MSGS, "the restart asks the original request"
    print(f"refused prefill, restart: {took:.2f}s")


@BREAKS
def test_an_openai_compatible_fallback_restarts_and_the_usage_counts_both_legs(gw: GatewayProcess,
                                                                               sims: Sims, broken: Fault) -> None:
    sims.a.add_fault(broken)
    chunks, done, took = stream(gw, "to-gpt")
    assert_whole(chunks, done)
    calls = model_calls(sims.gpt)
    assert len(calls) == 1 and calls[0]["messages"] == MSGS
    usage = [c["usage"] for c in chunks if c.get("usage")]
    # a's 7 pieces relayed, plus gpt's whole answer (15 pieces, the 7 repeated ones included)
    assert usage and usage[-1]["completion_tokens"] == 7 + 15
    print(f"openai restart: {took:.2f}s")


def test_a_restart_configured_on_a_prefill_capable_deployment(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=CUT))
    chunks, done, _ = stream(gw, "to-b-restarting")
    assert_whole(chunks, done)
    assert [c.get("continue_final_message") for c in model_calls(sims.b)] == [None]


def test_an_instruction_asks_the_fallback_to_go_on_from_the_text_sent(gw: GatewayProcess, sims: Sims) -> None:
    """`continuation: instruction` (a model that refuses a prefill): the text so far as the assistant's turn,
    then a user turn asking it to go on; what it answers is relayed after the text the client has."""
    from routing.continuation import CONTINUE_INSTRUCTION

    sims.a.add_fault(Fault.cut_stream(after_chunks=CUT))
    chunks, done, took = stream(gw, "to-b-told")
    calls = model_calls(sims.b)
    sent = "Reply to: Tell me about foxes. The"
    assert len(calls) == 1 and not calls[0].get("continue_final_message"), "no prefill asked"
    assert calls[0]["messages"] == [*MSGS, {"role": "assistant", "content": sent},
                                    {"role": "user", "content": CONTINUE_INSTRUCTION}]
    rest = canonical_reply(calls[0]["messages"])  # what the simulated model says to that
    assert text_of(chunks) == sent + rest and finishes(chunks) == ["stop"] and done
    assert len({c["id"] for c in chunks}) == 1 and not any("error" in c for c in chunks)
    print(f"instruction: {took:.2f}s")


def assert_honest_error(chunks: list[dict[str, Any]], done: bool, sent: str) -> None:
    """What the client got before the break, an in-band error, [DONE]: nothing contradicting, no finish."""
    assert text_of(chunks) == sent
    assert "error" in chunks[-1] and done
    assert finishes(chunks) == [], "a truncated answer never ends as if complete"


def test_a_restart_whose_answer_differs_ends_with_an_in_band_error(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=CUT))
    sims.gpt.reply_override = "Reply to: Tell me about foxes. A fox is a small canid."
    chunks, done, took = stream(gw, "to-gpt")
    assert_honest_error(chunks, done, "Reply to: Tell me about foxes. The")
    assert "does not match" in chunks[-1]["error"]["message"]
    print(f"divergent restart: {took:.2f}s")


def test_a_restart_that_finishes_before_covering_the_text_sent_ends_with_an_in_band_error(
        gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=12))  # 11 pieces sent; gpt stops before "brown"
    chunks, done, _ = stream(gw, "to-gpt-stopping")
    assert_honest_error(chunks, done, "Reply to: Tell me about foxes. The quick brown fox jumps")
    assert "finished after" in chunks[-1]["error"]["message"]


def test_a_deployment_that_never_continues_is_not_asked(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=CUT))
    chunks, done, _ = stream(gw, "to-nobody")
    assert_honest_error(chunks, done, "Reply to: Tell me about foxes. The")
    assert model_calls(sims.b) == []
