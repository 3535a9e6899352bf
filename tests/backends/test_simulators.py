"""The simulated upstreams speak each protocol faithfully and inject faults as advertised.

The gateway's failover tests trust these simulators, so they are checked here
against the official OpenAI SDK and against raw HTTP.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.paths import ROOT
from tests.sim import AnthropicSim, Fault, OpenAISim, VLLMSim, canonical_reply
from tests.sim.text import words
from tests.waiting import wait_until

HELLO = [{"role": "user", "content": "Hello there"}]
HELLO_REPLY = "Reply to: Hello there. The quick brown fox jumps over the lazy dog."
ANTHROPIC_HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


@pytest.fixture
def oai() -> Iterator[OpenAISim]:
    with OpenAISim(api_key="sk-good", model_name="gpt-sim") as sim:
        yield sim


@pytest.fixture
def vllm() -> Iterator[VLLMSim]:
    with VLLMSim(model_name="qwen-awq") as sim:
        yield sim


@pytest.fixture
def claude() -> Iterator[AnthropicSim]:
    with AnthropicSim() as sim:
        yield sim


def sdk(sim: OpenAISim, key: str = "sk-good") -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key=key, max_retries=0, timeout=5)


def chat(sim: Any, body: dict[str, Any], timeout: float = 5, **kw: Any) -> httpx.Response:
    return httpx.post(sim.url + "/v1/chat/completions", json={"model": "m", **body}, timeout=timeout, **kw)


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of an SSE body."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name = next((ln[7:] for ln in block.split("\n") if ln.startswith("event: ")), None)
        data = "\n".join(ln[6:] for ln in block.split("\n") if ln.startswith("data: "))
        out.append((name, data))
    return out


def messages(sim: AnthropicSim, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    full = {"model": "claude-sim", "max_tokens": 100, "messages": HELLO, **body}
    return httpx.post(sim.url + "/v1/messages", json=full, headers=ANTHROPIC_HEADERS if headers is None else headers,
                      timeout=5)


# ------------------------------------------------------------------ text
def test_canonical_text_rules() -> None:
    assert canonical_reply(HELLO) == HELLO_REPLY
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]}]
    assert canonical_reply(parts) == "Reply to: a b. The quick brown fox jumps over the lazy dog."
    assert canonical_reply("Once upon a time") == " and the quick brown fox jumps over the lazy dog."
    assert canonical_reply([{"role": "tool", "tool_call_id": "x", "content": "20C"}]).startswith("Reply to: tool result 20C.")
    assert words(HELLO_REPLY)[:3] == ["Reply", " to:", " Hello"]
    assert "".join(words(HELLO_REPLY)) == HELLO_REPLY


# ---------------------------------------------------------------- OpenAI
def test_openai_sdk_non_stream(oai: OpenAISim) -> None:
    r = sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO)
    assert r.choices[0].message.content == HELLO_REPLY and r.choices[0].finish_reason == "stop"
    assert r.model == "gpt-sim" and r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 13
    short = sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO, max_completion_tokens=3)
    assert short.choices[0].message.content == "Reply to: Hello" and short.choices[0].finish_reason == "length"
    stopped = sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO, stop=[" fox"], n=2)
    assert [c.message.content for c in stopped.choices] == ["Reply to: Hello there. The quick brown"] * 2
    assert oai.count("/v1/chat/completions") == 3
    rec = oai.requests[0]
    assert rec.headers["authorization"] == "Bearer sk-good" and rec.body["messages"] == HELLO


def test_openai_sdk_stream_with_usage(oai: OpenAISim) -> None:
    chunks = list(sdk(oai).chat.completions.create(
        model="gpt-sim", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO_REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 13
    assert len({(c.id, c.created) for c in chunks}) == 1


def test_openai_completions_stream_raw(oai: OpenAISim) -> None:
    r = httpx.post(oai.url + "/v1/completions", headers={"Authorization": "Bearer sk-good"}, timeout=5,
                   json={"model": "m", "prompt": "Once", "stream": True, "max_tokens": 50})
    events = [d for _, d in sse_events(r.text)]
    assert events[-1] == "[DONE]"
    data = [json.loads(d) for d in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in data) == canonical_reply("Once")
    assert data[-1]["choices"][0]["finish_reason"] == "stop" and data[0]["object"] == "text_completion"


def test_openai_errors(oai: OpenAISim) -> None:
    with pytest.raises(openai.AuthenticationError) as auth:
        sdk(oai, key="sk-bad").chat.completions.create(model="gpt-sim", messages=HELLO)
    assert auth.value.code == "invalid_api_key" and auth.value.type == "invalid_request_error"
    bad = httpx.post(oai.url + "/v1/chat/completions", content=b"{nope", timeout=5,
                     headers={"Authorization": "Bearer sk-good", "Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = chat(oai, {}, headers={"Authorization": "Bearer sk-good"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"


def test_openai_rate_limit_fault(oai: OpenAISim) -> None:
    oai.add_fault(Fault.status(429, retry_after=2))
    with pytest.raises(openai.RateLimitError) as err:
        sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO)
    assert err.value.response.headers["retry-after"] == "2"
    assert isinstance(err.value.body, dict) and err.value.code == "rate_limit_exceeded"
    assert sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO).choices[0].message.content == HELLO_REPLY


def test_openai_in_band_error(oai: OpenAISim) -> None:
    oai.add_fault(Fault.in_band_error(2))
    seen = []
    with pytest.raises(openai.APIError):
        for c in sdk(oai).chat.completions.create(model="gpt-sim", messages=HELLO, stream=True):
            seen.append(c)
    assert len(seen) == 2


# ------------------------------------------------------------------ vLLM
def test_vllm_error_shapes() -> None:
    with VLLMSim() as new, VLLMSim(old_error_shape=True) as old, VLLMSim(api_key="tok") as keyed:
        new.add_fault(Fault.status(503, message="busy"))
        body = chat(new, {"messages": HELLO}).json()
        assert body == {"error": {"message": "busy", "type": "ServiceUnavailableError", "param": None, "code": 503}}
        missing = chat(new, {})
        assert missing.status_code == 400 and missing.json()["error"]["code"] == 400
        assert missing.json()["error"]["type"] == "BadRequestError"
        old.add_fault(Fault.status(500))
        flat = chat(old, {"messages": HELLO}).json()
        assert flat["object"] == "error" and flat["code"] == 500 and flat["type"] == "InternalServerError"
        denied = chat(keyed, {"messages": HELLO})
        assert denied.status_code == 401 and denied.json() == {"error": "Unauthorized"}
        assert httpx.get(keyed.url + "/health").status_code == 200  # /health needs no key


def parse_metrics(text: str) -> dict[str, float]:
    """name{labels} -> value, checking each family has HELP and TYPE lines."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"# (HELP|TYPE) vllm:\w+ ", line), line
            continue
        m = re.fullmatch(r'(vllm:\w+)\{model_name="([^"]+)",engine="0"(?:,le="[^"]+")?\} (\S+)', line)
        assert m, line
        out.setdefault(m.group(1), float(m.group(3)))
    return out


def test_vllm_metrics_and_health(vllm: VLLMSim) -> None:
    vllm.waiting, vllm.running, vllm.kv_cache_usage = 3, 2, 0.75
    chat(vllm, {"messages": HELLO})
    metrics = parse_metrics(httpx.get(vllm.url + "/metrics").text)
    assert metrics["vllm:num_requests_waiting"] == 3 and metrics["vllm:num_requests_running"] == 2
    assert metrics["vllm:kv_cache_usage_perc"] == 0.75 and metrics["vllm:prompt_tokens_total"] == 2
    assert "vllm:e2e_request_latency_seconds_bucket" in metrics
    with VLLMSim(legacy_kv_metric=True) as legacy:
        legacy.kv_cache_usage = 0.5
        m = parse_metrics(httpx.get(legacy.url + "/metrics").text)
        assert m["vllm:gpu_cache_usage_perc"] == 0.5 and "vllm:kv_cache_usage_perc" not in m
    health = httpx.get(vllm.url + "/health")
    assert health.status_code == 200 and health.content == b""
    vllm.healthy = False
    assert httpx.get(vllm.url + "/health").status_code == 503


def test_vllm_continuation_and_extras(vllm: VLLMSim) -> None:
    partial = "Reply to: Hello there. The quick"
    convo = HELLO + [{"role": "assistant", "content": partial}]
    extras = {"top_k": 5, "min_p": 0.1, "structured_outputs": {"json": {"type": "object"}}, "add_generation_prompt": False}
    r = chat(vllm, {"messages": convo, "continue_final_message": True, **extras}).json()
    assert r["choices"][0]["message"]["content"] == " brown fox jumps over the lazy dog."
    assert vllm.requests[-1].body["structured_outputs"] == {"json": {"type": "object"}}
    plain = chat(vllm, {"messages": convo}).json()  # without the flag the assistant turn is history
    assert plain["choices"][0]["message"]["content"] == HELLO_REPLY
    both = chat(vllm, {"messages": convo, "continue_final_message": True, "add_generation_prompt": True})
    assert both.status_code == 400
    models = httpx.get(vllm.url + "/v1/models").json()["data"][0]
    assert models["owned_by"] == "vllm" and models["id"] == "qwen-awq" and models["max_model_len"] == 4096


def test_vllm_usage_on_when_stream_options_present(vllm: VLLMSim) -> None:
    r = chat(vllm, {"messages": HELLO, "stream": True, "stream_options": {}})
    data = [json.loads(d) for _, d in sse_events(r.text)[:-1]]
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 13


# ---------------------------------------------------------------- faults
def test_reset_fault_and_queue(vllm: VLLMSim) -> None:
    vllm.add_fault(Fault.reset(), times=2)
    assert httpx.get(vllm.url + "/health").status_code == 200  # not a model endpoint: no fault taken
    for _ in range(2):
        with pytest.raises(httpx.TransportError):
            chat(vllm, {"messages": HELLO})
    assert chat(vllm, {"messages": HELLO}).status_code == 200
    vllm.set_fault(Fault.status(500))
    assert [chat(vllm, {"messages": HELLO}).status_code for _ in range(2)] == [500, 500]
    vllm.clear_faults()
    assert chat(vllm, {"messages": HELLO}).status_code == 200


def test_hang_times_out_and_stop_is_prompt(vllm: VLLMSim) -> None:
    vllm.add_fault(Fault.hang())
    with pytest.raises(httpx.TimeoutException):
        chat(vllm, {"messages": HELLO}, timeout=0.5)
    vllm.add_fault(Fault.hang())
    with httpx.Client(timeout=5) as client:  # keep one hung request open while stopping
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.post(vllm.url + "/v1/chat/completions", json={"messages": HELLO})
            except BaseException as exc:  # noqa: BLE001 - recorded for the assert
                errors.append(exc)

        seen = vllm.count("/v1/chat/completions")
        t = threading.Thread(target=call)
        t.start()
        wait_until(lambda: vllm.count("/v1/chat/completions") > seen, timeout=30, interval=0.01,
                   what="the request reaching the sim")
        start = time.monotonic()
        vllm.stop()
        assert time.monotonic() - start < 2
        t.join(5)
    assert errors and isinstance(errors[0], httpx.TransportError)


def test_latency_and_chunk_delay(vllm: VLLMSim) -> None:
    vllm.add_fault(Fault.latency(0.3))
    start = time.monotonic()
    assert chat(vllm, {"messages": HELLO}).json()["choices"][0]["message"]["content"] == HELLO_REPLY
    assert time.monotonic() - start >= 0.3
    vllm.add_fault(Fault.chunk_delay(0.02))
    start = time.monotonic()
    r = chat(vllm, {"messages": HELLO, "stream": True})
    assert time.monotonic() - start >= 0.02 * 14 and r.text.endswith("data: [DONE]\n\n")


def test_cut_stream(vllm: VLLMSim) -> None:
    vllm.add_fault(Fault.cut_stream(3))
    got = []
    with pytest.raises(httpx.TransportError):
        with httpx.stream("POST", vllm.url + "/v1/chat/completions", json={"messages": HELLO, "stream": True}) as r:
            got.extend(line for line in r.iter_lines() if line)
    assert len(got) == 3 and "[DONE]" not in "".join(got)
    assert json.loads(got[-1][6:])["choices"][0]["delta"]["content"] == " to:"
    vllm.add_fault(Fault.cut_stream(1))
    with pytest.raises(httpx.TransportError):
        chat(vllm, {"messages": HELLO})  # non-streamed: like a reset


def test_stop_and_restart_same_port(vllm: VLLMSim) -> None:
    port = vllm.port
    vllm.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    vllm.restart()
    assert vllm.port == port and httpx.get(vllm.url + "/health").status_code == 200


@pytest.mark.process
def test_separate_process_can_be_killed() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "tests.sim", "anthropic", "--port", "0", "--model", "c"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert url.startswith("http://127.0.0.1:")
        r = httpx.post(url + "/v1/messages", headers=ANTHROPIC_HEADERS, timeout=5,
                       json={"model": "x", "max_tokens": 5, "messages": HELLO})
        assert r.json()["model"] == "c"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)


# ------------------------------------------------------------- Anthropic
def test_anthropic_non_stream_and_validation(claude: AnthropicSim) -> None:
    r = messages(claude, {"system": [{"type": "text", "text": "Be brief"}]}).json()
    assert r["type"] == "message" and r["content"] == [{"type": "text", "text": HELLO_REPLY}]
    assert r["stop_reason"] == "end_turn" and r["stop_sequence"] is None and r["model"] == "claude-sim"
    assert r["usage"] == {"input_tokens": 4, "output_tokens": 13, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 0}
    short = messages(claude, {"max_tokens": 2}).json()
    assert short["stop_reason"] == "max_tokens" and short["content"][0]["text"] == "Reply to:"
    stop = messages(claude, {"stop_sequences": ["brown"]}).json()
    assert stop["stop_reason"] == "stop_sequence" and stop["stop_sequence"] == "brown"
    no_max = httpx.post(claude.url + "/v1/messages", headers=ANTHROPIC_HEADERS,
                        json={"model": "m", "messages": HELLO})
    assert no_max.status_code == 400 and no_max.json()["error"]["type"] == "invalid_request_error"
    sys_role = messages(claude, {"messages": [{"role": "system", "content": "x"}] + HELLO})
    assert sys_role.status_code == 400
    assert messages(claude, {}, headers={"anthropic-version": "2023-06-01"}).status_code == 401
    assert messages(claude, {}, headers={"x-api-key": "k"}).status_code == 400


def test_anthropic_overloaded_fault(claude: AnthropicSim) -> None:
    claude.add_fault(Fault.status(529, retry_after=1.5))
    r = messages(claude, {})
    assert r.status_code == 529 and r.headers["retry-after"] == "1.5"
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "overloaded_error"
    assert body["request_id"].startswith("req_")


def test_anthropic_stream_order(claude: AnthropicSim) -> None:
    events = sse_events(messages(claude, {"stream": True}).text)
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == n for n, d in zip(names, data))
    assert data[0]["message"]["content"] == [] and data[0]["message"]["usage"]["input_tokens"] == 2
    text = "".join(d["delta"]["text"] for d in data if d["type"] == "content_block_delta")
    assert text == HELLO_REPLY
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"]["output_tokens"] == 13 and "[DONE]" not in str(events)


def test_anthropic_tool_use(claude: AnthropicSim) -> None:
    tools = [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}]
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = messages(claude, {"tools": tools, "messages": ask}).json()
    assert r["stop_reason"] == "tool_use" and r["content"][0] == {"type": "text", "text": "Let me check."}
    use = r["content"][1]
    assert use["type"] == "tool_use" and use["name"] == "get_weather" and use["input"] == {"city": "Paris"}
    data = [json.loads(d) for _, d in sse_events(messages(claude, {"tools": tools, "messages": ask, "stream": True}).text)]
    starts = [d["content_block"] for d in data if d["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == ["text", "tool_use"] and starts[1]["input"] == {}
    partial = "".join(d["delta"]["partial_json"] for d in data if d["type"] == "content_block_delta"
                      and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris"}
    result = ask + [{"role": "assistant", "content": r["content"]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "Sunny weather"}]}]
    follow = messages(claude, {"tools": tools, "messages": result}).json()
    assert follow["content"][0]["text"].startswith("Reply to: tool result Sunny weather.")


def test_anthropic_prefill_and_stream_faults(claude: AnthropicSim) -> None:
    prefill = HELLO + [{"role": "assistant", "content": "Reply to: Hello there. The quick brown"}]
    r = messages(claude, {"messages": prefill}).json()
    assert r["content"][0]["text"] == " fox jumps over the lazy dog." and r["stop_reason"] == "end_turn"
    claude.add_fault(Fault.in_band_error(2))
    events = sse_events(messages(claude, {"stream": True}).text)
    assert [n for n, _ in events].count("content_block_delta") == 2 and events[-1][0] == "error"
    assert json.loads(events[-1][1])["error"]["type"] == "overloaded_error"
    claude.add_fault(Fault.cut_stream(4))
    got: list[str] = []
    with pytest.raises(httpx.TransportError):
        with httpx.stream("POST", claude.url + "/v1/messages", headers=ANTHROPIC_HEADERS,
                          json={"model": "m", "max_tokens": 50, "messages": HELLO, "stream": True}) as resp:
            got.extend(resp.iter_lines())
    assert sum(line == "event: content_block_delta" for line in got) == 4 and "event: message_stop" not in got
