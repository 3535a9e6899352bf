"""The Anthropic backend: pure translation, the stream translator, and HTTP against fakes and the simulator."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from backends.anthropic.backend import AnthropicBackend, messages_url
from backends.anthropic.stream import StreamTranslator
from backends.anthropic.translate import (
    PLACEHOLDER_USER,
    apply_params,
    build_body,
    convert_messages,
    finish_reason,
    to_chat_completion,
    trim_repeat,
    upstream_error,
    usage,
)
from backends.base import CallContext
from backends.contract.errors import GatewayError, InvalidRequest, StreamInterrupted, UpstreamError, UpstreamUnavailable
from backends.contract.protocol import ChatCompletionRequest
from backends.http import PoolSettings, UpstreamPool

KEY = "sk-ant-test-SECRET-0123456789"


def req(**kw: Any) -> ChatCompletionRequest:
    kw.setdefault("model", "claude")
    kw.setdefault("messages", [{"role": "user", "content": "hi"}])
    return ChatCompletionRequest.model_validate(kw)


def body(**kw: Any) -> dict[str, Any]:
    return build_body(req(**kw), model="claude-x", default_max_tokens=4096)


def frames_json(frames: list[bytes]) -> list[Any]:
    out = []
    for f in frames:
        assert f.startswith(b"data: ") and f.endswith(b"\n\n"), f
        payload = f[6:-2]
        out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


# -- request translation ----------------------------------------------------------------


def test_system_and_developer_go_to_top_level_system() -> None:
    b = body(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                       {"role": "developer", "content": [{"type": "text", "text": "Use French."}]}])
    assert b["system"] == "Be brief.\n\nUse French."
    assert b["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert b["model"] == "claude-x" and b["max_tokens"] == 4096 and "stream" not in b


def test_multi_turn_merges_same_role_and_starts_with_user() -> None:
    system, turns = convert_messages(req(messages=[
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"},
    ]).messages)
    assert system is None
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert turns[0]["content"] == [{"type": "text", "text": PLACEHOLDER_USER}]
    assert turns[2]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]


def test_system_only_conversation_gets_a_placeholder_user_turn() -> None:
    system, turns = convert_messages(req(messages=[{"role": "system", "content": "s"}]).messages)
    assert system == "s" and turns == [{"role": "user", "content": [{"type": "text", "text": PLACEHOLDER_USER}]}]


def test_tool_round_trip() -> None:
    b = body(messages=[
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call.2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "rain"}]},
        {"role": "user", "content": "thanks"},
    ])
    assert [t["role"] for t in b["messages"]] == ["user", "assistant", "user"]
    assert b["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "get_weather", "input": {"city": "Rome"}}]
    assert b["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "rain"},
        {"type": "text", "text": "thanks"}]


def test_assistant_text_and_tool_calls_keep_order_and_empty_args() -> None:
    b = body(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "now", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c", "content": ""}])
    assert b["messages"][1]["content"] == [{"type": "text", "text": "Let me check."},
                                           {"type": "tool_use", "id": "c", "name": "now", "input": {}}]
    assert b["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "c"}]


@pytest.mark.parametrize("args", ["{not json", "[1, 2]"])
def test_invalid_tool_arguments_are_a_400(args: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        body(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": args}}]}])
    assert e.value.status_code == 400 and e.value.param == "messages[1].tool_calls"


def test_tools_and_tool_choice() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather.",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
             {"type": "function", "function": {"name": "now"}}]
    b = body(tools=tools)
    assert b["tools"] == [
        {"name": "get_weather", "description": "Weather.",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}]
    assert "tool_choice" not in b
    cases = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"},
             "named": {"type": "tool", "name": "now"}}
    for key, want in cases.items():
        choice = {"type": "function", "function": {"name": "now"}} if key == "named" else key
        assert body(tools=tools, tool_choice=choice)["tool_choice"] == want
    assert body(tools=tools, parallel_tool_calls=False)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any", "disable_parallel_tool_use": True}
    assert body(tools=tools, tool_choice="none", parallel_tool_calls=False)["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in body(tool_choice="auto")
    with pytest.raises(InvalidRequest) as e:
        body(tool_choice="required")
    assert e.value.param == "tool_choice"
    with pytest.raises(InvalidRequest) as e:
        body(tools=[{"type": "custom", "custom": {"name": "x"}}])
    assert e.value.param == "tools[0]"


def test_images() -> None:
    b = body(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "low"}}]}])
    assert b["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]
    for bad in ("data:text/plain;base64,aGk=", "ftp://x/y.png", "data:image/png,raw"):
        with pytest.raises(InvalidRequest):
            body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": bad}}]}])


def test_other_content_parts_are_a_400() -> None:
    with pytest.raises(InvalidRequest) as e:
        body(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}])
    assert e.value.status_code == 400 and e.value.param == "messages"


def test_sampling_parameters() -> None:
    b = body(max_tokens=100, max_completion_tokens=50, stop="END", temperature=1.7, top_p=0.9, top_k=40, user="u-1",
             seed=3, presence_penalty=0.5, frequency_penalty=0.5, logit_bias={"1": 2}, response_format={"type": "text"},
             something_new=True)
    assert b["max_tokens"] == 50 and b["stop_sequences"] == ["END"] and b["temperature"] == 1.0
    assert b["top_p"] == 0.9 and b["top_k"] == 40 and b["metadata"] == {"user_id": "u-1"}
    for dropped in ("seed", "presence_penalty", "frequency_penalty", "logit_bias", "response_format", "something_new", "n"):
        assert dropped not in b
    assert body(temperature=0.3)["temperature"] == 0.3
    assert body(max_tokens=7, stop=["a", "b"])["max_tokens"] == 7


@pytest.mark.parametrize("kw,param", [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
])
def test_unsupported_parameters_are_a_400(kw: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        body(**kw)
    assert e.value.status_code == 400 and e.value.param == param and e.value.code == "unsupported_parameter"


def test_params_override_the_request() -> None:
    r = apply_params(req(temperature=0.9, max_completion_tokens=1000), {"temperature": 0.2, "max_tokens": 512})
    b = build_body(r, model="m", default_max_tokens=4096)
    assert b["temperature"] == 0.2 and b["max_tokens"] == 512


def test_prefill_is_stripped_and_merged() -> None:
    _, turns = convert_messages(req().messages, "Partial answer")
    assert turns[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Partial answer"}]}
    _, turns = convert_messages(req(messages=[{"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "own prefill  "}]).messages)
    assert turns[-1]["content"] == [{"type": "text", "text": "own prefill"}]


def test_trim_repeat() -> None:
    assert trim_repeat(" world", " ") == ("world", "")
    assert trim_repeat("world", " ") == ("world", "")
    assert trim_repeat("\n", "\n\n") == ("", "\n")
    assert trim_repeat(" x", "\n") == (" x", "")


# -- response translation ------------------------------------------------------------------


@pytest.mark.parametrize("stop,finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("pause_turn", "stop"), ("max_tokens", "length"),
    ("model_context_window_exceeded", "length"), ("tool_use", "tool_calls"), ("refusal", "content_filter"),
    ("something_new", "stop"), (None, "stop"),
])
def test_stop_reason_mapping(stop: str | None, finish: str) -> None:
    assert finish_reason(stop) == finish


def test_usage_mapping() -> None:
    assert usage({"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 3,
                  "cache_read_input_tokens": 2}) == {
        "prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3}}  # writes are kept apart too
    assert usage({"input_tokens": 4, "output_tokens": 1, "cache_creation_input_tokens": None,
                  "cache_read_input_tokens": None}) == {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}


def test_message_to_chat_completion() -> None:
    out = to_chat_completion({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "stop_reason": "tool_use",
        "content": [{"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "usage": {"input_tokens": 10, "output_tokens": 5}}, created=123)
    assert out["id"] == "chatcmpl-msg_1" and out["object"] == "chat.completion" and out["created"] == 123
    assert out["model"] == "claude-x" and isinstance(out["system_fingerprint"], str)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["logprobs"] is None
    assert choice["message"] == {"role": "assistant", "content": "Checking.", "refusal": None, "tool_calls": [
        {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]}
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    only_tools = to_chat_completion({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}, created=1)
    assert only_tools["choices"][0]["message"]["content"] is None
    plain = to_chat_completion({"content": [{"type": "text", "text": " rest"}], "stop_reason": "end_turn"},
                               created=1, skip=" ")
    assert plain["choices"][0]["message"] == {"role": "assistant", "content": "rest", "refusal": None}


# -- error mapping -------------------------------------------------------------------------


def _err(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"})


def test_529_maps_to_503_with_retry_after_and_retryable() -> None:
    e = upstream_error(529, _err("overloaded_error", "Overloaded"), {"retry-after": "2"}, upstream="a")
    assert isinstance(e, UpstreamError) and e.upstream_status == 529
    assert e.status_code == 503 and e.retryable and e.headers["Retry-After"] == "2"
    assert e.code == "overloaded_error" and e.message == "Overloaded"
    assert e.body()["error"]["type"] == "service_unavailable_error"


def test_client_errors_are_not_retryable_and_keep_their_status() -> None:
    e = upstream_error(400, _err("invalid_request_error", "max_tokens: too big"), {}, upstream="a")
    assert e.status_code == 400 and not e.retryable and e.code == "invalid_request_error"
    assert e.message == "max_tokens: too big" and e.error_type == "invalid_request_error"
    e = upstream_error(429, _err("rate_limit_error", "slow down"), {"retry-after-ms": "7000"}, upstream="a")
    assert e.status_code == 429 and e.retryable and e.headers["Retry-After"] == "7"
    e = upstream_error(400, _err("invalid_request_error", "prompt is too long: 300000 tokens > 200000 maximum"),
                       {}, upstream="a")
    assert e.code == "context_length_exceeded"


def test_non_json_error_body_and_secret_scrubbing() -> None:
    e = upstream_error(502, b"<html>Bad Gateway</html>", {}, upstream="claude-a")
    assert e.status_code == 502 and e.retryable and "claude-a" in e.message
    e = upstream_error(401, _err("authentication_error", f"invalid x-api-key {KEY}"), {}, upstream="a", secrets=(KEY,))
    assert KEY not in e.message and e.status_code == 502 and e.code == "upstream_auth_failed"  # not the client's 401


# -- stream translation --------------------------------------------------------------------


def _text_events(stop: str = "end_turn") -> list[tuple[str, dict[str, Any]]]:
    return [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "stop_reason": None, "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " there"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": 6}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def _run(events: list[tuple[str, dict[str, Any]]], **kw: Any) -> tuple[StreamTranslator, list[Any]]:
    tr = StreamTranslator(created=77, include_usage=kw.pop("include_usage", False), **kw)
    frames: list[bytes] = []
    for name, data in events:
        frames += tr.feed(name, data)
    return tr, frames_json(frames)


def test_stream_text_frames_in_order() -> None:
    tr, chunks = _run(_text_events("max_tokens"))
    assert tr.done and chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-msg_9", 77, "claude-x", "chat.completion.chunk")}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "Hello"}, {"content": " there"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert all("usage" not in c for c in chunks)


def test_stream_include_usage_adds_exactly_one_usage_chunk_before_done() -> None:
    _, chunks = _run(_text_events(), include_usage=True)
    assert chunks[-1] == "[DONE]"
    usage_chunks = [c for c in chunks[:-1] if c["choices"] == []]
    assert usage_chunks == [chunks[-2]]
    assert chunks[-2]["usage"] == {"prompt_tokens": 15, "completion_tokens": 6, "total_tokens": 21,
                                   "prompt_tokens_details": {"cached_tokens": 3}}
    assert all(c["usage"] is None for c in chunks[:-2])
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"


def test_stream_tool_call_deltas() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "msg_t", "model": "claude-x", "usage": {"input_tokens": 5}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Sure."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ]
    for block, (tid, city) in enumerate([("toolu_a", "Paris"), ("toolu_b", "Rome")], start=1):
        events += [
            ("content_block_start", {"type": "content_block_start", "index": block, "content_block": {
                "type": "tool_use", "id": tid, "name": "get_weather", "input": {}}}),
            ("content_block_delta", {"type": "content_block_delta", "index": block,
                                     "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": block,
                                     "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
            ("content_block_delta", {"type": "content_block_delta", "index": block,
                                     "delta": {"type": "input_json_delta", "partial_json": f'"{city}"}}'}}),
            ("content_block_stop", {"type": "content_block_stop", "index": block}),
        ]
    events += [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
               ("message_stop", {"type": "message_stop"})]
    _, chunks = _run(events)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas[:2] == [{"role": "assistant", "content": ""}, {"content": "Sure."}]
    assert deltas[2] == {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}
    assert deltas[3:5] == [{"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
                           {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}]
    assert deltas[5]["tool_calls"][0]["index"] == 1 and deltas[5]["tool_calls"][0]["id"] == "toolu_b"
    assert deltas[6:8] == [{"tool_calls": [{"index": 1, "function": {"arguments": '{"city": '}}]},
                           {"tool_calls": [{"index": 1, "function": {"arguments": '"Rome"}'}}]}]
    assert deltas[8] == {} and chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_without_message_stop_is_not_done() -> None:
    tr, chunks = _run(_text_events()[:-2])
    assert not tr.done and "[DONE]" not in chunks
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


def test_stream_error_event_raises_mapped_upstream_error() -> None:
    events = _text_events()[:4] + [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]
    with pytest.raises(UpstreamError) as e:
        _run(events)
    assert e.value.upstream_status == 529 and e.value.status_code == 503 and e.value.retryable
    with pytest.raises(UpstreamError) as e:
        _run([("error", {"type": "error", "error": {"type": "api_error", "message": "boom"}})])
    assert e.value.status_code == 500


def test_stream_continuation_drops_repeated_whitespace() -> None:
    events = _text_events()
    events[3] = ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " "}})
    _, chunks = _run(events, skip=" ")
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": " there"}, {}]


def test_messages_url() -> None:
    for base in ("https://api.anthropic.com", "https://api.anthropic.com/", "https://api.anthropic.com/v1",
                 "https://api.anthropic.com/v1/", "https://api.anthropic.com/v1/messages"):
        assert messages_url(base) == "https://api.anthropic.com/v1/messages"


# -- HTTP against a scripted fake upstream --------------------------------------------------

Handler = Callable[[web.Request], Any]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(PoolSettings(connect_timeout_s=2, read_timeout_s=5))
    yield p
    await p.aclose()


@pytest.fixture
async def fake(pool: UpstreamPool) -> AsyncIterator[Callable[[Handler], Any]]:
    servers: list[TestServer] = []

    async def make(handler: Handler, **kw: Any) -> AnthropicBackend:
        app = web.Application()
        app.router.add_post("/v1/messages", handler)
        server = TestServer(app)
        await server.start_server()
        servers.append(server)
        return AnthropicBackend("claude-a", None, base_url=str(server.make_url("/v1/")), model="claude-x",
                                api_key=KEY, pool=pool, **kw)

    yield make
    for s in servers:
        await s.close()


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


async def _stream_reply(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    for ev in events:
        await resp.write(ev)
    await resp.write_eof()
    return resp


async def _collect(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [f async for f in stream]


async def test_fake_non_json_error_body(fake: Callable[[Handler], Any]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="upstream connect error", headers={"retry-after": "3"})

    backend = await fake(handler)
    for call in (backend.chat, backend.chat_stream):
        with pytest.raises(UpstreamError) as e:
            await call(req(), CallContext())
        assert e.value.status_code == 503 and e.value.retryable and e.value.retry_after == 3.0
        assert KEY not in e.value.message


async def test_fake_request_shape_and_params(fake: Callable[[Handler], Any]) -> None:
    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x-2025",
                                  "content": [{"type": "text", "text": " and more"}], "stop_reason": "end_turn",
                                  "usage": {"input_tokens": 3, "output_tokens": 2}})

    backend = await fake(handler, default_max_tokens=99, anthropic_version="2099-01-01")
    out = await backend.chat(req(temperature=0.9), CallContext(params={"temperature": 0.1},
                                                               continue_from="Partial "))
    headers, sent = seen[0]
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2099-01-01"
    assert headers["Content-Type"] == "application/json"
    assert sent["max_tokens"] == 99 and sent["temperature"] == 0.1 and sent["model"] == "claude-x"
    assert sent["messages"][-1] == {"role": "assistant", "content": [{"type": "text", "text": "Partial"}]}
    assert out["choices"][0]["message"]["content"] == "and more" and out["model"] == "claude-x-2025"
    assert KEY not in repr(backend)


async def test_fake_connection_refused_is_unavailable(pool: UpstreamPool) -> None:
    backend = AnthropicBackend("claude-a", None, base_url="http://127.0.0.1:9", model="m", api_key=KEY, pool=pool)
    for call in (backend.chat, backend.chat_stream):
        with pytest.raises(UpstreamUnavailable) as e:
            await call(req(), CallContext(connect_timeout=1))
        assert KEY not in e.value.message


async def test_fake_stream_ending_without_message_stop(fake: Callable[[Handler], Any]) -> None:
    events = [_sse(n, d) for n, d in _text_events()[:-2]]

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _stream_reply(request, events)

    backend = await fake(handler)
    stream = await backend.chat_stream(req(stream=True), CallContext())
    got: list[bytes] = []
    with pytest.raises(StreamInterrupted):
        async for frame in stream:
            got.append(frame)
    assert len(got) == 3 and b"[DONE]" not in b"".join(got)


async def test_fake_error_before_first_frame_is_raised_by_chat_stream(fake: Callable[[Handler], Any]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _stream_reply(request, [b": comment\n\n", _sse("ping", {"type": "ping"}),
                                             _sse("error", {"type": "error", "error": {"type": "overloaded_error",
                                                                                       "message": "Overloaded"}})])

    backend = await fake(handler)
    with pytest.raises(UpstreamError) as e:
        await backend.chat_stream(req(stream=True), CallContext())
    assert e.value.status_code == 503 and e.value.upstream_status == 529


async def test_fake_empty_200_stream_is_unavailable(fake: Callable[[Handler], Any]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _stream_reply(request, [])

    backend = await fake(handler)
    with pytest.raises(UpstreamUnavailable):
        await backend.chat_stream(req(stream=True), CallContext())


TENANT_TOKEN = "tenant-credential-7f3a9c2e"  # no key's shape: only scrubbing by value takes it out


@pytest.mark.parametrize("where", ["http_error", "error_envelope", "event_before_text", "event_after_text"])
async def test_an_upstream_echoing_a_configured_header_value_never_shows_it(fake: Callable[[Handler], Any],
                                                                           where: str) -> None:
    """A custom auth header from the config's `headers`, quoted back by the upstream in an error, in each
    place an error can come from: an HTTP error body, a 200 error envelope, an `event: error` before the
    first text (an HTTP error) or after it (raised from the stream)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        echoed = f"x-tenant-token {request.headers['x-tenant-token']} is not a tenant of this organization"
        error = {"type": "error", "error": {"type": "invalid_request_error", "message": echoed}}
        if where == "http_error":
            return web.Response(status=400, body=orjson.dumps(error), content_type="application/json")
        if where == "error_envelope":
            return web.json_response(error)
        text = [_sse(n, d) for n, d in _text_events()[:4]] if where == "event_after_text" else []
        return await _stream_reply(request, [*text, _sse("error", error)])

    backend = await fake(handler, headers={"x-tenant-token": TENANT_TOKEN})
    calls = {"http_error": [backend.chat, backend.chat_stream], "error_envelope": [backend.chat]}.get(
        where, [backend.chat_stream])
    for call in calls:
        with pytest.raises(UpstreamError) as e:
            stream = await call(req(stream=call == backend.chat_stream), CallContext())
            async for _ in stream:
                pass
        shown = f"{e.value.message} {e.value.body()}"
        assert TENANT_TOKEN not in shown and "x-tenant-token *** is not a tenant" in e.value.message, shown


async def test_completions_are_refused_and_lifecycle(fake: Callable[[Handler], Any]) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("not called")

    backend = await fake(handler)
    await backend.start()
    assert backend.status().state == "ready" and backend.status().kind == "anthropic"
    assert await backend.probe() and backend.supports_continuation
    from backends.contract.protocol import CompletionRequest
    creq = CompletionRequest.model_validate({"model": "claude", "prompt": "hi"})
    for call in (backend.completion, backend.completion_stream):
        with pytest.raises(InvalidRequest) as e:
            await call(creq, CallContext())
        assert e.value.code == "unsupported_endpoint" and e.value.param == "model"
    await backend.aclose()


# -- integration against the Anthropic simulator ---------------------------------------------

from tests.sim import AnthropicSim, Fault, canonical_reply  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Say hello"}]
WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city.",
                                                   "parameters": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture
def sim() -> Any:
    s = AnthropicSim(api_key=KEY).start()
    yield s
    s.stop()


@pytest.fixture
async def claude(sim: AnthropicSim, pool: UpstreamPool) -> AnthropicBackend:
    backend = AnthropicBackend("claude-a", None, base_url=sim.url, model="claude-sim-1", api_key=KEY, pool=pool)
    await backend.start()
    return backend


def _parse(frames: list[bytes]) -> tuple[list[dict[str, Any]], str]:
    chunks = frames_json(frames)
    assert chunks[-1] == "[DONE]" and "[DONE]" not in chunks[:-1]
    objs = chunks[:-1]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in objs if c["choices"])
    return objs, text


async def test_sim_chat(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    out = await claude.chat(req(messages=MESSAGES, max_tokens=200), CallContext())
    assert out["choices"][0]["message"]["content"] == canonical_reply(MESSAGES)
    assert out["choices"][0]["finish_reason"] == "stop" and out["model"] == "claude-sim-1"
    assert out["usage"]["prompt_tokens"] == 4 and out["usage"]["completion_tokens"] > 5
    sent = sim.requests[-1]
    assert sent.path == "/v1/messages" and sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "Be nice." and sent.body["max_tokens"] == 200


async def test_sim_stream_matches_chat(claude: AnthropicBackend) -> None:
    full = await claude.chat(req(messages=MESSAGES), CallContext())
    stream = await claude.chat_stream(req(messages=MESSAGES, stream=True, stream_options={"include_usage": True}),
                                      CallContext())
    objs, text = _parse(await _collect(stream))
    assert text == full["choices"][0]["message"]["content"]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert objs[-1]["choices"] == [] and objs[-1]["usage"] == full["usage"]
    assert objs[-2]["choices"][0]["finish_reason"] == "stop"
    assert len({(o["id"], o["created"], o["model"]) for o in objs}) == 1
    assert all(o["usage"] is None for o in objs[:-1])


async def test_sim_max_tokens_is_length(claude: AnthropicBackend) -> None:
    out = await claude.chat(req(messages=MESSAGES, max_completion_tokens=3), CallContext())
    assert out["choices"][0]["finish_reason"] == "length" and out["usage"]["completion_tokens"] == 3


async def test_sim_tool_call_round_trip(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    out = await claude.chat(req(messages=ask, tools=WEATHER_TOOLS), CallContext())
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}

    stream = await claude.chat_stream(req(messages=ask, tools=WEATHER_TOOLS, stream=True), CallContext())
    objs, text = _parse(await _collect(stream))
    assert text == "Let me check."
    calls = [tc for o in objs for tc in o["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["index"] == 0 and calls[0]["function"]["name"] == "get_weather" and calls[0]["id"]
    assert all(c["index"] == 0 for c in calls)
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert objs[-1]["choices"][0]["finish_reason"] == "tool_calls"

    follow = ask + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call["id"], "type": "function", "function": call["function"]}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
    out = await claude.chat(req(messages=follow, tools=WEATHER_TOOLS), CallContext())
    assert out["choices"][0]["message"]["content"] == canonical_reply(follow)
    assert sim.requests[-1].body["messages"][-1]["content"][0]["tool_use_id"] == call["id"]


async def test_sim_529_before_first_token(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    for call in (claude.chat, claude.chat_stream):
        sim.add_fault(Fault.status(529, retry_after=2))
        with pytest.raises(UpstreamError) as e:
            await call(req(messages=MESSAGES, stream=call == claude.chat_stream), CallContext())
        err = e.value
        assert err.status_code == 503 and err.upstream_status == 529 and err.retryable
        assert err.headers["Retry-After"] == "2" and err.code == "overloaded_error"


async def test_sim_400_is_not_retryable(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    sim.add_fault(Fault.status(400, message="messages: bad"))
    with pytest.raises(UpstreamError) as e:
        await claude.chat(req(messages=MESSAGES), CallContext())
    assert e.value.status_code == 400 and not e.value.retryable and e.value.message == "messages: bad"


async def test_sim_cut_stream_raises_from_iterator(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    sim.add_fault(Fault.cut_stream(after_chunks=3))
    stream = await claude.chat_stream(req(messages=MESSAGES, stream=True), CallContext())
    got: list[bytes] = []
    with pytest.raises(StreamInterrupted):
        async for frame in stream:
            got.append(frame)
    objs = frames_json(got)
    assert len(objs) == 4 and "[DONE]" not in objs  # role chunk + 3 content chunks
    assert all(o["choices"][0]["finish_reason"] is None for o in objs)


async def test_sim_in_band_error_raises_from_iterator(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    sim.add_fault(Fault.in_band_error(after_chunks=2))
    stream = await claude.chat_stream(req(messages=MESSAGES, stream=True), CallContext())
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as e:
        async for frame in stream:
            got.append(frame)
    assert len(got) == 3 and e.value.status_code == 503 and e.value.retryable


async def test_sim_reset_is_unavailable(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    sim.add_fault(Fault.reset())
    with pytest.raises(UpstreamUnavailable):
        await claude.chat_stream(req(messages=MESSAGES, stream=True), CallContext())


async def test_sim_read_timeout(claude: AnthropicBackend, sim: AnthropicSim) -> None:
    sim.add_fault(Fault.hang(5))
    with pytest.raises(GatewayError) as e:
        await claude.chat(req(messages=MESSAGES), CallContext(read_timeout=0.3))
    assert e.value.code == "timeout" and e.value.retryable


async def test_sim_wrong_key_never_leaks(sim: AnthropicSim, pool: UpstreamPool) -> None:
    wrong = "sk-ant-WRONG-key-987654321"
    backend = AnthropicBackend("claude-a", None, base_url=sim.url + "/v1", model="m", api_key=wrong, pool=pool)
    for call in (backend.chat, backend.chat_stream):
        with pytest.raises(UpstreamError) as e:
            await call(req(messages=MESSAGES), CallContext())
        assert e.value.status_code == 502 and e.value.upstream_status == 401 and wrong not in e.value.message and wrong not in str(e.value.body())
    assert sim.requests[-1].headers["x-api-key"] == wrong


@pytest.mark.parametrize("cut", [18, 25, 30])
async def test_sim_continuation_returns_only_the_remainder(claude: AnthropicBackend, sim: AnthropicSim, cut: int) -> None:
    full = canonical_reply(MESSAGES)
    partial = full[:cut]
    stream = await claude.chat_stream(req(messages=MESSAGES, stream=True), CallContext(continue_from=partial))
    objs, text = _parse(await _collect(stream))
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert partial + text == full
    prefill = sim.requests[-1].body["messages"][-1]
    assert prefill["role"] == "assistant" and prefill["content"][-1]["text"] == partial.rstrip()
    out = await claude.chat(req(messages=MESSAGES), CallContext(continue_from=partial))
    assert partial + out["choices"][0]["message"]["content"] == full


async def test_sim_bodies_conform_to_openai_schema(claude: AnthropicBackend, conforms: Callable[[str, Any], None]) -> None:
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    for messages, tools in ((MESSAGES, None), (ask, WEATHER_TOOLS)):
        conforms("CreateChatCompletionResponse", await claude.chat(req(messages=messages, tools=tools), CallContext()))
        stream = await claude.chat_stream(req(messages=messages, tools=tools, stream=True,
                                              stream_options={"include_usage": True}), CallContext())
        objs, _ = _parse(await _collect(stream))
        for chunk in objs:
            conforms("CreateChatCompletionStreamResponse", chunk)
