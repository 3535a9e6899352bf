"""Request parsing: OpenAI's 400 shape with `param` naming the field, unknown fields accepted."""

from __future__ import annotations

import orjson
import pytest

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, parse_request


def chat(**kw) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def param_of(raw: bytes, cls=ChatCompletionRequest) -> str | None:
    with pytest.raises(InvalidRequest) as err:
        parse_request(raw, cls)
    assert err.value.status_code == 400
    return err.value.param


def test_valid_request_and_unknown_fields() -> None:
    req = parse_request(chat(store=True, brand_new={"x": 1}, top_k=5), ChatCompletionRequest)
    assert req.top_k == 5
    assert req.max_output_tokens is None


def test_max_completion_tokens_wins() -> None:
    req = parse_request(chat(max_tokens=5, max_completion_tokens=9), ChatCompletionRequest)
    assert req.max_output_tokens == 9


@pytest.mark.parametrize("raw,param", [
    (chat(temperature=3), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(n=0), "n"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(stop=["a"] * 5), "stop"),
    (chat(presence_penalty=-3), "presence_penalty"),
    (chat(stream_options={"include_usage": True}), None),
    (orjson.dumps({"model": "m", "messages": [{"role": "bot", "content": "x"}]}), "messages[0].role"),
    (orjson.dumps({"model": "m", "messages": [{"role": "user"}]}), "messages[0]"),
    (orjson.dumps({"model": "m", "messages": []}), "messages"),
    (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), "model"),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "bad name!"}}), "response_format.json_schema.name"),
])
def test_bad_fields_are_named(raw: bytes, param: str | None) -> None:
    assert param_of(raw) == param


def test_stop_string_becomes_list() -> None:
    assert parse_request(chat(stop="x"), ChatCompletionRequest).stop == ["x"]


def test_developer_role_and_text_parts() -> None:
    req = parse_request(orjson.dumps({"model": "m", "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}),
        ChatCompletionRequest)
    assert req.messages[0].text() == "ab"


@pytest.mark.parametrize("prompt,expected", [
    ("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]]),
])
def test_completion_prompt_shapes(prompt, expected) -> None:
    req = parse_request(orjson.dumps({"model": "m", "prompt": prompt}), CompletionRequest)
    assert req.prompts() == expected
    assert req.max_tokens == 16


def test_malformed_json() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_request(b"{nope", ChatCompletionRequest)
    assert err.value.code == "invalid_json"
