"""Anthropic's Messages API with the official `anthropic` SDK against a real gateway and the real Gemma GGUF.

Bodies and events are validated against the SDK's own types (`Message`, `RawMessageStreamEvent`).
"""

from __future__ import annotations

import anthropic
import httpx
import pytest
from anthropic.types import Message, MessageTokensCount, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.conftest import MODEL
from tests.server import GatewayProcess
from tests.sse import named_events

pytestmark = pytest.mark.e2e

EVENTS = TypeAdapter(RawMessageStreamEvent)
HELLO = [{"role": "user", "content": "Say hello."}]
# This SDK no longer has a `temperature` argument (newer Claude models fix it); the API still takes the
# field, and the gateway passes it on: greedy decoding makes two answers comparable.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(gateway: GatewayProcess) -> anthropic.Anthropic:
    """The SDK as Claude Code points it at a gateway: base_url without /v1, any key."""
    return anthropic.Anthropic(base_url=gateway.base_url.removesuffix("/v1"), api_key="unused", max_retries=0,
                               timeout=120)


def strict_message(body: dict) -> Message:
    """The SDK's own validation, with every required field present (construct() would accept anything)."""
    return Message.model_validate(body)


def test_create_text(claude: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    m = claude.messages.create(model=MODEL, max_tokens=12, messages=HELLO, system="You are terse.", extra_body=GREEDY)
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.content and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= m.usage.output_tokens <= 12 and m.usage.input_tokens > 0
    raw = httpx.post(f"{gateway.base_url}/messages", timeout=60, headers={"anthropic-version": "2023-06-01"},
                     json={"model": MODEL, "max_tokens": 3, "messages": HELLO, "temperature": 0,
                           "stop_sequences": ["\n\n"]})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    strict_message(body)
    assert body["stop_reason"] == "max_tokens" and body["usage"]["output_tokens"] == 3
    assert raw.headers["request-id"] == raw.headers["x-request-id"]


def test_stream_events_and_final_message(claude: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    raw = httpx.post(f"{gateway.base_url}/messages", timeout=60,
                     json={"model": MODEL, "max_tokens": 10, "messages": HELLO, "temperature": 0, "stream": True})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = named_events(raw.text)
    for name, data in events:
        assert data["type"] == name
        if name != "ping":  # the SDK's stream reads pings itself; they are not a RawMessageStreamEvent
            EVENTS.validate_python(data)
    names = [n for n, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["input_tokens"] > 0 and 1 <= delta["usage"]["output_tokens"] <= 10
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    with claude.messages.stream(model=MODEL, max_tokens=10, messages=HELLO, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text == final.content[0].text, "temperature 0: the same answer twice"
    assert final.usage.input_tokens == delta["usage"]["input_tokens"]


def test_count_tokens_matches_usage(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=MODEL, messages=HELLO, system="You are terse.")
    assert isinstance(counted, MessageTokensCount)
    m = claude.messages.create(model=MODEL, max_tokens=2, messages=HELLO, system="You are terse.", extra_body=GREEDY)
    assert counted.input_tokens == m.usage.input_tokens, "the local model's own tokenizer and template"


def test_tool_history_is_accepted(claude: anthropic.Anthropic) -> None:
    """A conversation with tool_use and tool_result blocks (tools that ran before) is rendered and answered."""
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"},
                                     {"type": "text", "text": "Answer in one sentence."}]},
    ]
    m = claude.messages.create(model=MODEL, max_tokens=16, messages=messages, extra_body=GREEDY)
    assert m.content[0].type == "text" and m.content[0].text


def test_errors_are_anthropic_shaped(claude: anthropic.Anthropic, gateway: GatewayProcess) -> None:
    raw = httpx.post(f"{gateway.base_url}/messages", timeout=30, json={"model": MODEL, "messages": HELLO})
    assert raw.status_code == 400
    assert raw.json()["type"] == "error" and raw.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in raw.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=MODEL, max_tokens=5, messages=[{"role": "system", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model=MODEL, max_tokens=5, messages=HELLO,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    assert err.value.body["error"]["type"] == "not_found_error"
    raw = httpx.post(f"{gateway.base_url}/messages", timeout=30, content=b"{not json",
                     headers={"content-type": "application/json"})
    assert raw.status_code == 400 and raw.json()["type"] == "error"
    # Refused before any handler runs (here: not JSON at all), still in Anthropic's shape.
    raw = httpx.post(f"{gateway.base_url}/messages", timeout=30, content=b"hello", headers={"content-type": "text/plain"})
    assert raw.status_code == 415 and raw.json()["error"]["type"] == "invalid_request_error"
