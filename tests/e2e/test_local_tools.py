"""Tool calling and logprobs on the local Gemma model, through a real gateway, with the official SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL
from tests.e2e.test_schema_conformance import sse_events
from tests.server import GatewayProcess

pytestmark = pytest.mark.e2e

WEATHER_PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                  "properties": {"city": {"type": "string", "maxLength": 20},
                                 "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}
TIME_PARAMS = {"type": "object", "required": ["zone"], "properties": {"zone": {"type": "string", "maxLength": 12}}}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a time zone",
                                      "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]
FRESH = {"Cache-Control": "no-cache"}  # a stream the engine makes, not the cache's replay of an earlier answer


def validate_call(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}],
                         ids=["required", "named"])
def test_a_forced_call_then_the_answer_from_its_result(client: openai.OpenAI, conforms: Any, choice: Any) -> None:
    # One call: with parallel calls allowed, this 270M model tends to call again and again until max_tokens.
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice,
                                                           parallel_tool_calls=False, max_tokens=60, temperature=0)
    conforms("CreateChatCompletionResponse", raw.http_response.json())
    r = raw.parse()
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls", choice0
    assert choice0.message.content is None and choice0.message.tool_calls
    for call in choice0.message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        validate_call(call.function.name, call.function.arguments)
    assert len(choice0.message.tool_calls) == 1
    if isinstance(choice, dict):
        assert choice0.message.tool_calls[0].function.name == "get_time"
    call = choice0.message.tool_calls[0]
    history = [*ASK, choice0.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees celsius."}]
    final = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                           max_tokens=24, temperature=0)
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str) and final.choices[0].message.content.strip()


def test_a_streamed_call_arrives_in_argument_deltas(gateway: GatewayProcess, client: openai.OpenAI,
                                                    conforms: Any) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False,
            "max_tokens": 60, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=body, headers=FRESH, timeout=120) as resp:
        assert resp.status_code == 200
        events = sse_events(resp)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        conforms("CreateChatCompletionStreamResponse", chunk)
    deltas = [c["choices"][0]["delta"] for c in events[:-1]]
    calls = [d["tool_calls"][0] for d in deltas if d.get("tool_calls")]
    first, rest = calls[0], calls[1:]
    assert first["id"].startswith("call_") and first["type"] == "function" and first["function"]["arguments"] == ""
    assert all(c["index"] == 0 and set(c) == {"index", "function"} for c in rest)  # one call: parallel false
    assert len(rest) >= 2, "the arguments come as the model writes them, not as one piece"
    arguments = "".join(c["function"]["arguments"] for c in rest)
    validate_call(first["function"]["name"], arguments)
    assert not any(d.get("content") for d in deltas)
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # The SDK assembles the same call, and the answer not streamed is the same (temperature 0).
    full = client.chat.completions.create(**{k: v for k, v in body.items() if k != "stream"})
    call = full.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == (first["function"]["name"], arguments)


@pytest.mark.parametrize("question", ["What is the weather in Paris right now?", "Say hello to me."])
def test_auto_gives_calls_or_text_never_the_wrapper(client: openai.OpenAI, question: str) -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=[{"role": "user", "content": question}], tools=TOOLS,
                              parallel_tool_calls=False, max_tokens=40, temperature=0)
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    stream = client.chat.completions.create(**kw, stream=True, extra_headers=FRESH)
    streamed_text, streamed_calls = "", {}
    for chunk in stream:
        delta = chunk.choices[0].delta
        streamed_text += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = streamed_calls.setdefault(tc.index, {"name": tc.function.name, "arguments": ""})
            entry["arguments"] += tc.function.arguments or ""
    if msg.tool_calls:
        assert msg.content is None and r.choices[0].finish_reason in ("tool_calls", "length")
        if r.choices[0].finish_reason == "tool_calls":
            for call in msg.tool_calls:
                validate_call(call.function.name, call.function.arguments)
        assert [(c.function.name, c.function.arguments) for c in msg.tool_calls] == \
            [(c["name"], c["arguments"]) for c in streamed_calls.values()]
    else:
        assert isinstance(msg.content, str)
        assert '"response"' not in msg.content and not msg.content.lstrip().startswith("{")
        assert r.choices[0].finish_reason in ("stop", "length")
        assert streamed_text == msg.content and not streamed_calls


def test_tool_choice_none_ignores_the_tools(client: openai.OpenAI) -> None:
    with_tools = client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none",
                                                max_tokens=12, temperature=0)
    without = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=12, temperature=0)
    assert with_tools.choices[0].message.tool_calls is None
    assert with_tools.choices[0].message.content == without.choices[0].message.content
    assert with_tools.usage.prompt_tokens == without.usage.prompt_tokens


def test_bad_tools_are_400s_naming_the_param(client: openai.OpenAI) -> None:
    cases = [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}]},
         "tools[0].function.parameters"),
        ({"tools": TOOLS, "logprobs": True}, "logprobs"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, **extra)
        assert err.value.body["param"] == param, err.value.body  # type: ignore[index]


# -- logprobs ---------------------------------------------------------------------------------------------

SAY = [{"role": "user", "content": "Name three colours."}]


def check_content_logprobs(content: list[dict[str, Any]], top: int, text: str) -> None:
    assert "".join(e["token"] for e in content) == text
    for e in content:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == top
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
        lps = [a["logprob"] for a in e["top_logprobs"]]
        assert all(lp <= 0 for lp in lps) and lps == sorted(lps, reverse=True)
        assert e["logprob"] == pytest.approx(lps[0], abs=1e-4)  # greedy: the sampled token is the likeliest


def test_chat_logprobs_streamed_and_not(gateway: GatewayProcess, conforms: Any) -> None:
    body = {"model": MODEL, "messages": SAY, "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 3}
    r = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    full = r.json()
    conforms("CreateChatCompletionResponse", full)
    choice = full["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == full["usage"]["completion_tokens"] > 0 and choice["logprobs"]["refusal"] is None
    check_content_logprobs(content, 3, choice["message"]["content"])

    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.base_url}/chat/completions", json=stream_body, headers=FRESH,
                      timeout=120) as resp:
        events = sse_events(resp)
    for chunk in events[:-1]:
        conforms("CreateChatCompletionStreamResponse", chunk)
    streamed = [e for c in events[:-2] if (c["choices"][0]["logprobs"] or {}).get("content")
                for e in c["choices"][0]["logprobs"]["content"]]
    assert len(streamed) == events[-2]["usage"]["completion_tokens"]
    assert [(e["token"], e["bytes"]) for e in streamed] == [(e["token"], e["bytes"]) for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=1e-4)
    without = httpx.post(f"{gateway.base_url}/chat/completions", json={**body, "logprobs": False, "top_logprobs": None},
                         timeout=120).json()
    assert without["choices"][0]["logprobs"] is None
    assert without["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_completion_logprobs_streamed_and_not(client: openai.OpenAI, conforms: Any) -> None:
    kw: dict[str, Any] = dict(model=MODEL, prompt="The sky is", max_tokens=8, temperature=0, logprobs=2)
    raw = client.completions.with_raw_response.create(**kw)
    body = raw.http_response.json()
    conforms("CreateCompletionResponse", body)
    r = raw.parse()
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens > 0
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(x <= 0 for x in lp.token_logprobs) and all(len(alts) == 2 for alts in lp.top_logprobs)
    assert all(v <= 0 for alts in lp.top_logprobs for v in alts.values())

    streamed: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "text_offset": []}
    usage = None
    for chunk in client.completions.create(**kw, stream=True, stream_options={"include_usage": True},
                                           extra_headers=FRESH):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.logprobs is not None:
                for k in streamed:
                    streamed[k] += getattr(c.logprobs, k)
    assert usage is not None and len(streamed["tokens"]) == usage.completion_tokens
    assert streamed["tokens"] == lp.tokens and streamed["text_offset"] == lp.text_offset
    assert streamed["token_logprobs"] == pytest.approx(lp.token_logprobs, abs=1e-4)
