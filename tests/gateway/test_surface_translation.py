"""The Responses and Messages translations and their stream state machines, as pure functions (no server)."""

from __future__ import annotations

import orjson
import pytest

from backends.anthropic.native import EventCarrier
from backends.contract.errors import InvalidRequest
from backends.contract.native import ANTHROPIC_FIELD
from backends.contract.responses import ChatChunks
from gateway.surfaces.messages import translate as mt
from gateway.surfaces.messages.protocol import MessagesRequest
from gateway.surfaces.messages.stream import MessageEvents
from gateway.surfaces.responses import translate as rt
from gateway.surfaces.responses.protocol import ResponsesRequest
from gateway.surfaces.responses.stream import ResponseEvents
from tests.sse import named_events

pytestmark = pytest.mark.unit


def chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    return {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


# -- Responses -------------------------------------------------------------------------------------------


def test_responses_items_become_chat_messages() -> None:
    req = ResponsesRequest.model_validate({
        "model": "m", "instructions": "Be brief.", "max_output_tokens": 20, "parallel_tool_calls": False,
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather"}, {"type": "input_text", "text": "?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"x\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        ],
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "w"},
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}}})
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    body, conversation = rt.to_chat(req, history)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert conversation == body["messages"][1:], "the instructions are not part of the stored conversation"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user", "assistant", "tool", "tool"]
    assert body["messages"][3]["content"] == "Weather?"
    assert [c["id"] for c in body["messages"][4]["tool_calls"]] == ["c1", "c2"], "consecutive calls, one message"
    assert body["messages"][6] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}
    assert body["tools"] == [{"type": "function", "function": {"name": "w", "parameters": {"type": "object"},
                                                               "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "out",
                                                                              "schema": {"type": "object"}}}
    assert body["max_completion_tokens"] == 20 and body["parallel_tool_calls"] is False


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "file_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"background": True}, "background"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format.name"),
])
def test_responses_refusals_name_the_field(body: dict, param: str) -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "hi", **body})
    with pytest.raises(InvalidRequest) as err:
        rt.to_chat(req, [])
    assert err.value.param == param


def test_responses_stream_text_then_call_then_completed() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    state = ResponseEvents(req, "resp_1", 1)
    raw = state.start()
    raw += state.feed(chunk({"role": "assistant", "content": ""}))
    raw += state.feed(chunk({"content": "Let me "}))
    raw += state.feed(chunk({"content": "check."}))
    raw += state.feed(chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "w", "arguments": ""}}]}))
    raw += state.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}))
    raw += state.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}))
    raw += state.feed(chunk(finish="tool_calls"))
    raw += state.feed({"id": "c", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                                           "total_tokens": 12,
                                                           "prompt_tokens_details": {"cached_tokens": 3}}})
    raw += state.end()
    events = named_events(raw)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert [n for n, _ in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    final = events[-1][1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["output"][0]["content"][0]["text"] == "Let me check."
    assert final["output"][1]["arguments"] == "{\"a\":1}" and final["output"][1]["call_id"] == "call_9"
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 3 and final["usage"]["output_tokens"] == 7
    assert rt.assistant_message(final["output"]) == {
        "role": "assistant", "content": "Let me check.",
        "tool_calls": [{"id": "call_9", "type": "function", "function": {"name": "w", "arguments": "{\"a\":1}"}}]}


def test_responses_stream_error_fails_the_response() -> None:
    state = ResponseEvents(ResponsesRequest.model_validate({"model": "m", "input": "hi"}), "resp_1", 1)
    raw = state.start() + state.feed(chunk({"content": "par"}))
    raw += state.feed({"error": {"message": "upstream broke", "type": "server_error", "code": "stream_broken"}})
    names = [n for n, _ in named_events(raw)]
    assert names[-2:] == ["error", "response.failed"] and state.failed and state.final is None
    failed = named_events(raw)[-1][1]["response"]
    assert failed["status"] == "failed" and failed["output"][0]["status"] == "incomplete"
    assert failed["output"][0]["content"][0]["text"] == "par"


# -- Messages --------------------------------------------------------------------------------------------


def test_messages_blocks_become_chat_messages() -> None:
    req = MessagesRequest.model_validate({
        "model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "stop_sequences": ["x"], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "tools": [{"name": "w", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "Checking."},
                                              {"type": "tool_use", "id": "t1", "name": "w", "input": {"c": "P"}}]},
            {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                         {"type": "tool_result", "tool_use_id": "t1",
                                          "content": [{"type": "text", "text": "sun"}], "is_error": True}]},
        ]})
    body = mt.to_chat(req)
    assert body["messages"][0] == {"role": "system", "content": "A\n\nB"}
    assert body["messages"][2] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"P\"}"}}]}
    assert body["messages"][3] == {"role": "tool", "tool_call_id": "t1", "content": "[error] sun"}, \
        "tool results first, right after the call"
    assert body["messages"][4] == {"role": "user", "content": "thanks"}
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stop"] == ["x"] and body["max_completion_tokens"] == 50


@pytest.mark.parametrize("body, param", [
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"name": "w"}]}, "tools[0].input_schema"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}, "messages[0].content[0].tool_use_id"),
    ({"output_config": {"format": {"type": "xml"}}}, "output_config.format"),
])
def test_messages_refusals_name_the_field(body: dict, param: str) -> None:
    req = MessagesRequest.model_validate({"model": "m", "max_tokens": 5,
                                          "messages": [{"role": "user", "content": "hi"}], **body})
    with pytest.raises(InvalidRequest) as err:
        mt.to_chat(req)
    assert err.value.param == param


def test_messages_usage_keeps_cache_reads_out_of_input_tokens() -> None:
    assert mt.usage({"prompt_tokens": 100, "completion_tokens": 9, "total_tokens": 109,
                     "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 10}}) == {
        "input_tokens": 30, "output_tokens": 9, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 60}


def test_messages_stream_tool_arguments_are_never_dropped() -> None:
    req = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
                                                                                      "content": "hi"}]})
    state = MessageEvents(req)
    raw = state.start("m")
    raw += state.feed(chunk({"content": "Ok."}))
    raw += state.feed(chunk({"tool_calls": [{"index": 0, "id": "t", "function": {"name": "w", "arguments": "{\"c"}}]}))
    raw += state.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\":1}"}}]}))
    raw += state.feed(chunk({"tool_calls": [{"index": 1, "id": "u", "function": {"name": "v", "arguments": "{}"}}]}))
    raw += state.feed(chunk(finish="tool_calls"))
    raw += state.end()
    events = named_events(raw)
    json_parts = {}
    for name, data in events:
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta":
            json_parts.setdefault(data["index"], []).append(data["delta"]["partial_json"])
    assert {i: "".join(p) for i, p in json_parts.items()} == {1: "{\"c\":1}", 2: "{}"}
    assert [d["content_block"]["type"] for n, d in events if n == "content_block_start"] == ["text", "tool_use",
                                                                                             "tool_use"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_events_ride_their_chat_frames_and_a_fallback_continues_the_block() -> None:
    """What an Anthropic deployment sends for a passed-through request, then a fallback's chat frames."""
    chunks = ChatChunks(id="c", created=1, model="m", fingerprint=None, include_usage=True)
    carrier = EventCarrier()
    upstream = [
        ({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                                "content": [], "stop_reason": None, "stop_sequence": None,
                                                "usage": {"input_tokens": 3, "output_tokens": 1}}},
         [chunks.role(0)]),
        ({"type": "ping"}, []),
        ({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, []),
        ({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
         [chunks.content(0, "Hel")]),
    ]
    frames = [f for ev, produced in upstream for f in carrier.carry(ev, produced, chunks)]
    parsed = [orjson.loads(f[len(b"data: "):]) for f in frames]
    assert [len(p[ANTHROPIC_FIELD]) for p in parsed] == [1, 1, 1, 1], "each event on exactly one frame"
    req = MessagesRequest.model_validate({"model": "m", "max_tokens": 5, "messages": [{"role": "user",
                                                                                      "content": "hi"}]})
    state = MessageEvents(req)
    raw = b"".join(state.feed(p) for p in parsed)
    # The Anthropic stream breaks; a fallback continues with plain chat frames.
    raw += state.feed(chunk({"content": "lo"})) + state.feed(chunk(finish="stop"))
    raw += state.end()
    events = named_events(raw)
    assert [n for n, _ in events] == ["message_start", "ping", "content_block_start", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert events[4][1] == {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}
