"""Function tools through the Responses and Messages surfaces on the local Gemma model (llama.cpp's grammar
forces the call), with the official `openai` and `anthropic` SDKs."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import openai
import pytest
from anthropic.types import Message

from tests.conftest import MODEL
from tests.e2e.test_local_tools import WEATHER_PARAMS
from tests.e2e.test_responses_api import check_events
from tests.server import GatewayProcess
from tests.sse import named_events

pytestmark = pytest.mark.e2e

ASK = "What is the weather in Paris right now?"
FRESH = {"Cache-Control": "no-cache"}  # the engine's own stream, not the cache's replay of an earlier answer


def test_responses_forced_call_then_previous_response_id_and_the_result(client: openai.OpenAI, conforms) -> None:
    tools = [{"type": "function", "name": "get_weather", "description": "The current weather in a city",
              "parameters": WEATHER_PARAMS, "strict": True}]
    raw = client.responses.with_raw_response.create(model=MODEL, input=ASK, tools=tools, tool_choice="required",
                                                    parallel_tool_calls=False, max_output_tokens=60, temperature=0)
    conforms("Response", raw.http_response.json())
    first = raw.parse()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and first.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER_PARAMS)
    second = client.responses.create(model=MODEL, previous_response_id=first.id, tools=tools, tool_choice="none",
                                     input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                                             "output": "Sunny, 21 degrees celsius."}],
                                     max_output_tokens=16, temperature=0)
    assert second.output_text and not [i for i in second.output if i.type == "function_call"]
    alone = client.responses.create(model=MODEL, input=ASK, tools=tools, tool_choice="none", max_output_tokens=1,
                                    temperature=0)
    assert second.usage.input_tokens > alone.usage.input_tokens + 10, "the call and its result are in the prompt"


def test_responses_stream_function_call_arguments(gateway: GatewayProcess, conforms) -> None:
    import httpx

    tools = [{"type": "function", "name": "get_weather", "parameters": WEATHER_PARAMS}]
    r = httpx.post(f"{gateway.base_url}/responses", timeout=120, headers=FRESH, json={
        "model": MODEL, "input": ASK, "tools": tools, "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False, "max_output_tokens": 60, "temperature": 0, "stream": True})
    events = named_events(r.text)
    check_events(events, conforms)
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert len(deltas) >= 2 and "".join(deltas) == done["arguments"], "the arguments stream as they are generated"
    jsonschema.validate(json.loads(done["arguments"]), WEATHER_PARAMS)


def test_messages_tool_use_on_the_local_model(gateway: GatewayProcess) -> None:
    claude = anthropic.Anthropic(base_url=gateway.root_url, api_key="unused", max_retries=0, timeout=120)
    tools = [{"name": "get_weather", "description": "The current weather in a city", "input_schema": WEATHER_PARAMS}]
    ask = [{"role": "user", "content": ASK}]
    choice = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    raw = claude.messages.with_raw_response.create(model=MODEL, max_tokens=60, tools=tools, tool_choice=choice,
                                                   messages=ask, extra_body={"temperature": 0})
    m = Message.model_validate(raw.http_response.json())
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER_PARAMS)
    with claude.messages.stream(model=MODEL, max_tokens=60, tools=tools, tool_choice=choice, messages=ask,
                                extra_body={"temperature": 0}, extra_headers=FRESH) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    fragments = [e.delta.partial_json for e in events if e.type == "content_block_delta"
                 and e.delta.type == "input_json_delta"]
    block = next(b for b in streamed.content if b.type == "tool_use")
    assert len(fragments) >= 2 and json.loads("".join(fragments)) == block.input == use.input
    answer = claude.messages.create(model=MODEL, max_tokens=16, tools=tools, tool_choice={"type": "none"},
                                    extra_body={"temperature": 0}, messages=[
        *ask, {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C"}]}])
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.content[0].type == "text"
