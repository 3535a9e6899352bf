"""gateway/grpc_api/convert.py on its own: the chat chunk fast path builds exactly what json_format builds
(for any chunk, generated), and a request message gives the OpenAI JSON a client would have sent."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.grpc_api import convert
from gateway.grpc_api.stubs import load

pytestmark = pytest.mark.unit
stubs = load()
pb = stubs.pb

text = st.text(max_size=12)
maybe = st.none() | text
delta = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["assistant", "user"]) | st.none(),
                                            "content": maybe, "refusal": maybe,
                                            "tool_calls": st.just([{"index": 0, "id": "c1", "type": "function",
                                                                    "function": {"name": "f", "arguments": "{}"}}])})
choice = st.fixed_dictionaries({"index": st.integers(0, 3)}, optional={
    "delta": delta, "finish_reason": st.sampled_from(["stop", "length", "tool_calls"]) | st.none(),
    "logprobs": st.none() | st.just({"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]}),
})
usage = st.fixed_dictionaries({"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6),
                               "total_tokens": st.integers(0, 10**6)},
                              optional={"prompt_tokens_details": st.just({"cached_tokens": 3})})
chunk = st.fixed_dictionaries({"id": text, "object": st.just("chat.completion.chunk"),
                               "created": st.integers(0, 2**40), "model": text,
                               "choices": st.lists(choice, max_size=3)},
                              optional={"usage": st.none() | usage, "system_fingerprint": maybe,
                                        "service_tier": maybe, "unknown_field": text})


@settings(max_examples=300, deadline=None)
@given(chunk)
def test_the_chunk_fast_path_is_what_json_format_builds(c: dict[str, Any]) -> None:
    slow = json_format.ParseDict(c, pb.ChatCompletionChunk(), ignore_unknown_fields=True)
    assert convert.chat_chunk(c, pb) == slow


message = st.fixed_dictionaries({}, optional={"role": st.just("assistant"), "content": maybe, "refusal": maybe,
                                              "tool_calls": st.just([{"id": "c1", "type": "function",
                                                                      "function": {"name": "f", "arguments": "{}"}}])})
body_choice = st.fixed_dictionaries({"index": st.integers(0, 3)}, optional={
    "message": message, "finish_reason": st.sampled_from(["stop", "length"]) | st.none(),
    "logprobs": st.none() | st.just({"content": []})})
body = st.fixed_dictionaries({"id": text, "object": st.just("chat.completion"), "created": st.integers(0, 2**40),
                              "model": text, "choices": st.lists(body_choice, max_size=3)},
                             optional={"usage": st.none() | usage, "system_fingerprint": maybe, "service_tier": maybe,
                                       "unknown_field": text})


@settings(max_examples=300, deadline=None)
@given(body)
def test_the_answer_fast_path_is_what_json_format_builds(b: dict[str, Any]) -> None:
    slow = json_format.ParseDict(b, pb.ChatCompletion(), ignore_unknown_fields=True)
    assert convert.chat_completion(b, pb) == slow


def test_the_common_chunk_takes_the_fast_path() -> None:
    common = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
              "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None, "logprobs": None}]}
    assert convert._plain(common, convert._CHUNK)
    assert not convert._plain({**common, "choices": [{"index": 0, "delta": {"tool_calls": []}}]}, convert._CHUNK)
    assert not convert._plain({**common, "extra": 1}, convert._CHUNK)
    answer = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    assert convert._plain(answer, convert._ANSWER) and not convert._plain({**answer, "choices": None}, convert._ANSWER)


def test_a_request_message_is_the_json_a_client_would_send() -> None:
    msg = json_format.ParseDict({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 2**40,
                                 "max_tokens": 5, "temperature": 0.5,
                                 "tools": [{"type": "function", "function": {"name": "f", "parameters": {
                                     "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}],
                                 "extra_body": {"top_k": 3, "max_tokens": 999, "some_new_field": [1, 2.5]}},
                                pb.ChatCompletionRequest())
    data = convert.request_dict(msg)
    assert data["seed"] == 2**40 and isinstance(data["seed"], int)  # int64: a number, not a string
    assert data["max_tokens"] == 5  # a named field wins over extra_body
    assert data["top_k"] == 3 and isinstance(data["top_k"], int) and data["some_new_field"] == [1, 2.5]
    minimum = data["tools"][0]["function"]["parameters"]["properties"]["n"]["minimum"]
    assert minimum == 1 and isinstance(minimum, int)
    assert data["temperature"] == 0.5 and "stream" not in data and "n" not in data  # unset is absent
    body = convert.request_of(msg, ChatCompletionRequest, stream=True)
    assert body.stream and body.top_k == 3

    prompt = json_format.ParseDict({"model": "m", "prompt": [[1, 2], [3]]}, pb.CompletionRequest())
    assert convert.request_of(prompt, CompletionRequest, stream=False).prompt == [[1, 2], [3]]
    assert convert.request_dict(prompt)["prompt"] == [[1, 2], [3]]
    embed = json_format.ParseDict({"model": "m", "input": [5, 6]}, pb.EmbeddingRequest())
    got = convert.request_of(embed, EmbeddingRequest, stream=False)
    assert got.input == [5, 6] and convert.request_dict(embed) == {"model": "m", "input": [5, 6]}


def test_embeddings_keep_every_float32_exactly() -> None:
    import struct

    vector = [struct.unpack("<f", struct.pack("<f", x / 7))[0] for x in range(-50, 50)]  # float32 values
    msg = convert.embeddings({"object": "list", "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2},
                              "data": [{"object": "embedding", "index": 0, "embedding": vector},
                                       {"object": "embedding", "index": 1, "embedding": "AAAAAA=="}]}, pb)
    assert list(msg.data[0].embedding) == vector and msg.data[1].embedding_base64 == "AAAAAA=="
    assert msg.usage.prompt_tokens == 2 and msg.data[1].index == 1
