"""The Responses and Messages surfaces on routed deployments (simulated vLLM, OpenAI and Anthropic upstreams):
failover and continuation mid-stream, function tools round trips, and spend counted toward the same budgets,
each driven by the official SDK of the surface (`openai`, `anthropic`)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import anthropic
import httpx
import jsonschema
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.e2e.test_responses_api import EVENT_SCHEMAS, check_events
from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import OPENAI_KEY, Sims, gw, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.sse import named_events
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway processes and simulated upstreams

ASK = "Tell me about foxes"
EXPECTED = canonical_reply([{"role": "user", "content": ASK}])
EVENTS = TypeAdapter(RawMessageStreamEvent)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city", "days"], "additionalProperties": False}


def oai(g: GatewayProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=30)


def claude(g: GatewayProcess, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=g.root_url, api_key=key, max_retries=0, timeout=30)


def stream_raw(g: GatewayProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{g.base_url}{path}", json={**body, "stream": True}, timeout=30)


# -- failover and continuation --------------------------------------------------------------------------


def test_responses_stream_broken_midway_is_continued_by_the_fallback(gw: GatewayProcess, sims: Sims,
                                                                     conforms) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    r = stream_raw(gw, "/responses", {"model": "chat-default", "input": ASK})
    assert r.status_code == 200
    events = named_events(r.text)
    check_events(events, conforms)
    names = [n for n, _ in events]
    assert names.count("response.output_item.added") == 1, "one answer, not two"
    assert names[-1] == "response.completed" and "response.failed" not in names
    text = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert text == EXPECTED == events[-1][1]["response"]["output"][0]["content"][0]["text"]
    assert r.headers["x-gateway-attempts"] in ("1", "2")  # the headers were sent before the break
    assert sims.b.count("/v1/chat/completions") == 1, "the fallback continued it"
    # The SDK reads the same stream as one response.
    sims.a.add_fault(Fault.cut_stream(after_chunks=2))
    with oai(gw).responses.stream(model="chat-default", input=ASK) as stream:
        final = stream.get_final_response()
    assert final.output_text == EXPECTED


def test_messages_stream_broken_midway_is_continued_by_the_fallback(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    with claude(gw).messages.stream(model="chat-default", max_tokens=200,
                                    messages=[{"role": "user", "content": ASK}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == EXPECTED == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert sims.b.count("/v1/chat/completions") == 1


def test_plain_answers_fail_over_on_5xx(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.add_fault(Fault.status(500))
    r = oai(gw).responses.with_raw_response.create(model="chat-default", input=ASK)
    assert r.headers["x-gateway-deployment"] == "b" and r.parse().output_text == EXPECTED
    sims.a.add_fault(Fault.status(503))
    m = claude(gw).messages.with_raw_response.create(model="chat-default", max_tokens=200,
                                                      messages=[{"role": "user", "content": ASK}])
    assert m.headers["x-gateway-deployment"] == "b" and m.parse().content[0].text == EXPECTED


def test_a_break_that_cannot_be_continued_fails_the_stream_in_the_surface_shape(gw: GatewayProcess,
                                                                                sims: Sims, conforms) -> None:
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    events = named_events(stream_raw(gw, "/responses", {"model": "no-continue", "input": ASK}).text)
    check_events(events, conforms)
    names = [n for n, _ in events]
    assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
    assert events[-1][1]["response"]["status"] == "failed"
    assert events[-1][1]["response"]["error"]["code"] == "server_error"
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    with pytest.raises(anthropic.APIStatusError) as err:
        with claude(gw).messages.stream(model="no-continue", max_tokens=200,
                                        messages=[{"role": "user", "content": ASK}]) as stream:
            for _ in stream:
                pass
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "api_error"


# -- function tools --------------------------------------------------------------------------------------


def test_responses_function_tool_round_trip_with_previous_response_id(gw: GatewayProcess, sims: Sims,
                                                                      conforms) -> None:
    client = oai(gw)
    tools = [{"type": "function", "name": "weather", "description": "Forecast", "parameters": WEATHER,
              "strict": True}]
    first = client.responses.create(model="gpt-first", input="Weather in Paris for 3 days?", tools=tools)
    conforms("Response", client.responses.with_raw_response.retrieve(first.id).http_response.json())
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "weather"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    second = client.responses.create(model="gpt-first", previous_response_id=first.id, tools=tools, input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 21 C"}])
    assert "Sunny, 21 C" in second.output_text, "the simulated model answers from the tool's result"
    sent = [r.body for r in sims.gpt.requests if r.path == "/v1/chat/completions"][-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == calls[0].call_id == sent[2]["tool_call_id"]
    assert sent[2]["content"] == "Sunny, 21 C"


def test_responses_streams_function_call_arguments(gw: GatewayProcess, conforms) -> None:
    tools = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    r = stream_raw(gw, "/responses", {"model": "gpt-first", "input": "Weather?", "tools": tools,
                                      "tool_choice": {"type": "function", "name": "weather"}})
    events = named_events(r.text)
    check_events(events, conforms)
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta"]
    assert len(deltas) > 1, "the arguments arrive as deltas"
    done = next(d for n, d in events if n == "response.function_call_arguments.done")
    assert done["arguments"] == "".join(deltas) and done["name"] == "weather"
    jsonschema.validate(json.loads(done["arguments"]), WEATHER)
    final = events[-1][1]["response"]
    assert final["output"][0]["type"] == "function_call" and final["output"][0]["arguments"] == done["arguments"]


def test_messages_tool_use_round_trip(gw: GatewayProcess, sims: Sims) -> None:
    client = claude(gw)
    tools = [{"name": "weather", "description": "Forecast", "input_schema": WEATHER}]
    ask = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    raw = client.messages.with_raw_response.create(model="gpt-first", max_tokens=100, tools=tools, messages=ask,
                                                   tool_choice={"type": "any"})
    Message.model_validate(raw.http_response.json())
    m = raw.parse()
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    jsonschema.validate(use.input, WEATHER)
    assert sims.gpt.requests[-1].body["tool_choice"] == "required"
    # Streamed: the input arrives as input_json_delta fragments, none dropped.
    with client.messages.stream(model="gpt-first", max_tokens=100, tools=tools, messages=ask) as stream:
        events = list(stream)
        streamed = stream.get_final_message()
    fragments = [e.delta.partial_json for e in events if e.type == "content_block_delta"
                 and e.delta.type == "input_json_delta"]
    assert len(fragments) > 1
    block = next(b for b in streamed.content if b.type == "tool_use")
    assert json.loads("".join(fragments)) == block.input and streamed.stop_reason == "tool_use"
    jsonschema.validate(block.input, WEATHER)
    # The result goes back; the answer is text.
    answer = client.messages.create(model="gpt-first", max_tokens=100, tools=tools, messages=[
        *ask, {"role": "assistant", "content": [b.model_dump() for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[0].text
    sent = sims.gpt.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "Sunny"}


def test_raw_messages_stream_events_validate(gw: GatewayProcess) -> None:
    tools = [{"name": "weather", "input_schema": WEATHER}]
    r = httpx.post(f"{gw.base_url}/messages", timeout=30, json={
        "model": "gpt-first", "max_tokens": 100, "stream": True, "tools": tools,
        "messages": [{"role": "user", "content": "Weather?"}]})
    events = named_events(r.text)
    for name, data in events:
        if name != "ping":
            EVENTS.validate_python(data)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["tool_use"] and starts[0]["input"] == {}
    assert [n for n, _ in events][-2:] == ["message_delta", "message_stop"]


def test_messages_reach_an_anthropic_deployment(gw: GatewayProcess, sims: Sims) -> None:
    m = claude(gw).messages.create(model="claude", max_tokens=100, messages=[{"role": "user", "content": ASK}],
                                   system="Be brief.")
    assert m.content[0].text and m.usage.input_tokens > 0
    sent = [r for r in sims.claude.requests if r.path == "/v1/messages"][-1].body
    assert sent["system"] == "Be brief." and sent["messages"][0]["content"] in (ASK, [{"type": "text", "text": ASK}])


# -- keys, budgets and stored responses ------------------------------------------------------------------

MASTER = "sk-master-surfaces-0123456789"


@pytest.fixture
def keyed(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    cfg = {
        "redis": {"url": require_redis(), "prefix": unique_prefix()},
        "providers": {"openai": {"kind": "openai", "base_url": f"{sims.gpt.url}/v1", "api_key": "${SIM_OPENAI_KEY}"}},
        "deployments": [{"name": "gpt", "provider": "openai", "model": "sim-model", "card": "gpt-4o-mini"}],
        "routes": [{"name": "paid", "deployments": ["gpt"]}],
        "health_checks": {"interval_s": 5},
        "usage": {"flush_interval_s": 0.2},
    }
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER, "SIM_OPENAI_KEY": OPENAI_KEY}) as g:
        yield g
    sims.reset()


def create_key(g: GatewayProcess, **fields: Any) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                   json={"alias": "surfaces", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def test_spend_on_every_surface_counts_toward_one_budget(keyed: GatewayProcess) -> None:
    key = create_key(keyed, budget_usd=0.00008, budget_period="daily")
    served = {"chat": 0, "responses": 0, "messages": 0, "responses-stream": 0, "messages-stream": 0}
    refused = None
    for turn in range(40):
        surface = list(served)[turn % len(served)]
        try:
            if surface == "chat":
                oai(keyed, key).chat.completions.create(model="paid", messages=[{"role": "user", "content": ASK}])
            elif surface == "responses":
                oai(keyed, key).responses.create(model="paid", input=ASK, store=False)
            elif surface == "responses-stream":
                with oai(keyed, key).responses.stream(model="paid", input=ASK, store=False) as s:
                    s.get_final_response()
            elif surface == "messages":
                claude(keyed, key).messages.create(model="paid", max_tokens=100,
                                                   messages=[{"role": "user", "content": ASK}])
            else:
                with claude(keyed, key).messages.stream(model="paid", max_tokens=100,
                                                        messages=[{"role": "user", "content": ASK}]) as s:
                    s.get_final_message()
        except (openai.RateLimitError, anthropic.RateLimitError) as exc:
            refused = exc
            break
        served[surface] += 1
    assert refused is not None, "the budget ran out"
    assert all(n >= 1 for n in served.values()), served
    with pytest.raises(anthropic.RateLimitError) as err:
        claude(keyed, key).messages.create(model="paid", max_tokens=10, messages=[{"role": "user", "content": ASK}])
    assert err.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError) as oerr:
        oai(keyed, key).responses.create(model="paid", input=ASK)
    assert oerr.value.code == "insufficient_quota"

    def counted() -> list[dict[str, Any]] | None:
        rows = httpx.get(f"{keyed.root_url}/admin/usage", headers={"Authorization": f"Bearer {MASTER}"}).json()
        rows = [r for r in rows["rows"] if r["route"] == "paid"]
        return rows if sum(r["requests"] for r in rows) >= sum(served.values()) else None

    rows = wait_until(counted, timeout=30, what="every surface's usage in Redis")
    assert sum(r["requests"] for r in rows) == sum(served.values())
    assert sum(r["completion_tokens"] for r in rows) > 0 and sum(r["cost_usd"] for r in rows) > 0


def test_stored_responses_belong_to_their_key(keyed: GatewayProcess) -> None:
    alice, bob = create_key(keyed), create_key(keyed)
    mine = oai(keyed, alice).responses.create(model="paid", input=ASK)
    assert oai(keyed, alice).responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.NotFoundError):
        oai(keyed, bob).responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        oai(keyed, bob).responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as err:
        oai(keyed, bob).responses.create(model="paid", input="more", previous_response_id=mine.id)
    assert err.value.body["param"] == "previous_response_id"
    assert oai(keyed, alice).responses.create(model="paid", input="more", previous_response_id=mine.id).output_text
    with pytest.raises(openai.AuthenticationError):
        oai(keyed, "sk-wrong").responses.retrieve(mine.id)
    r = httpx.get(f"{keyed.base_url}/responses/{mine.id}", headers={"x-api-key": alice}, timeout=10)
    assert r.status_code == 200, "x-api-key is a key too"
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        claude(keyed, "sk-wrong").messages.create(model="paid", max_tokens=5, messages=[{"role": "user",
                                                                                       "content": ASK}])
    assert aerr.value.body["error"]["type"] == "authentication_error"
    assert claude(keyed, alice).messages.create(model="paid", max_tokens=50, messages=[
        {"role": "user", "content": ASK}]).content[0].text == EXPECTED


def test_event_schema_table_covers_what_the_gateway_sends() -> None:
    """The table the checks use names a schema for every event type the translator can send."""
    import inspect

    from gateway.surfaces.responses import stream

    sent = set(__import__("re").findall(r'"(response\.[a-z_.]+|error)"', inspect.getsource(stream)))
    assert sent <= set(EVENT_SCHEMAS), sent - set(EVENT_SCHEMAS)


# -- Anthropic deployments: the Messages request passed through ------------------------------------------


def test_messages_pass_through_to_anthropic_with_thinking_and_cache_usage(gw: GatewayProcess, sims: Sims) -> None:
    """Fields chat has no word for (thinking, cache_control) reach Anthropic as written, and its own
    message comes back: the thinking block with its signature, cache reads, the stop sequence."""
    from tests.sim.anthropic_sim import CACHED_TOKENS, THINKING

    body = {"model": "claude", "max_tokens": 300, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": ASK}]}
    raw = httpx.post(f"{gw.base_url}/messages", json=body, timeout=30,
                     headers={"anthropic-beta": "interleaved-thinking-2025-05-14", "x-api-key": "sk-client-own"})
    assert raw.status_code == 200, raw.text
    m = Message.model_validate(raw.json())
    upstream = [r for r in sims.claude.requests if r.path == "/v1/messages"][-1]
    assert upstream.headers["anthropic-beta"] == "interleaved-thinking-2025-05-14", "beta features pass too"
    assert upstream.headers["x-api-key"] != "sk-client-own", "the deployment's own key, never the client's"
    sent = upstream.body
    assert sent["thinking"] == body["thinking"] and sent["system"] == body["system"], "passed through as written"
    assert sent["messages"] == body["messages"] and sent["model"] == "claude-haiku-4-5"
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == THINKING and m.content[0].signature.startswith("sig_")
    assert m.usage.cache_read_input_tokens == CACHED_TOKENS
    # The signed thinking block goes back in the next turn unchanged, as tool use with thinking requires.
    follow = {**body, "messages": [*body["messages"], {"role": "assistant", "content": raw.json()["content"]},
                                   {"role": "user", "content": "And wolves?"}]}
    assert httpx.post(f"{gw.base_url}/messages", json=follow, timeout=30).status_code == 200
    resent = [r for r in sims.claude.requests if r.path == "/v1/messages"][-1].body
    assert resent["messages"][1]["content"][0]["signature"] == m.content[0].signature
    stopped = claude(gw).messages.create(model="claude", max_tokens=300, stop_sequences=["brown"],
                                         messages=[{"role": "user", "content": ASK}])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "brown"


def test_messages_stream_passes_anthropic_events_through(gw: GatewayProcess, sims: Sims) -> None:
    from tests.sim.anthropic_sim import CACHED_TOKENS, THINKING

    body = {"model": "claude", "max_tokens": 300, "stream": True, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": [{"type": "text", "text": ASK,
                                                       "cache_control": {"type": "ephemeral"}}]}]}
    events = named_events(httpx.post(f"{gw.base_url}/messages", json=body, timeout=30).text)
    for name, data in events:
        assert data["type"] == name
        if name != "ping":
            EVENTS.validate_python(data)
    names = [n for n, _ in events]
    assert names.count("message_start") == 1 and names[-1] == "message_stop" and names.count("message_stop") == 1
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert deltas[0] == {"type": "thinking_delta", "thinking": THINKING}
    assert deltas[1]["type"] == "signature_delta" and deltas[1]["signature"].startswith("sig_")
    assert events[0][1]["message"]["usage"]["cache_read_input_tokens"] == CACHED_TOKENS
    with claude(gw).messages.stream(**{k: v for k, v in body.items() if k != "stream"}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == EXPECTED
    assert final.content[0].signature == deltas[1]["signature"]


def test_a_broken_anthropic_stream_is_continued_by_another_deployment(sims: Sims) -> None:
    """Primary Anthropic (passed through), fallback vLLM (translated): one message, no second message_start."""
    from tests.routing_env import base_config, start_gateway

    config = base_config(sims)
    config["routes"].append({"name": "claude-then-vllm", "deployments": ["claude", "b"],
                             "timeouts": config["routes"][0]["timeouts"], "retry": config["routes"][0]["retry"]})
    sims.reset()
    sims.claude.add_fault(Fault.cut_stream(after_chunks=3))
    with start_gateway(sims, config) as g:
        r = httpx.post(f"{g.base_url}/messages", timeout=30, json={
            "model": "claude-then-vllm", "max_tokens": 300, "stream": True,
            "messages": [{"role": "user", "content": ASK}]})
        events = named_events(r.text)
    for name, data in events:
        if name != "ping":
            EVENTS.validate_python(data)
    names = [n for n, _ in events]
    assert names.count("message_start") == 1 and names[-2:] == ["message_delta", "message_stop"]
    text = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert text == EXPECTED, "the fallback continued the text block the primary began"
    starts = [d["index"] for n, d in events if n == "content_block_start"]
    assert starts == [0], "one text block"
    assert sims.b.count("/v1/chat/completions") == 1
    sims.reset()


def test_a_cached_answer_replays_on_both_surfaces(gw: GatewayProcess, sims: Sims, conforms) -> None:
    """The second identical greedy request is a cache hit (not relayed by the router), translated the same."""
    for path, body, text_of in [
        ("/responses", {"model": "chat-default", "input": ASK, "temperature": 0, "store": False},
         lambda evs: "".join(d["delta"] for n, d in evs if n == "response.output_text.delta")),
        ("/messages", {"model": "chat-default", "max_tokens": 200, "temperature": 0,
                       "messages": [{"role": "user", "content": ASK}]},
         lambda evs: "".join(d["delta"].get("text", "") for n, d in evs if n == "content_block_delta")),
    ]:
        first, second = stream_raw(gw, path, body), stream_raw(gw, path, body)
        assert (first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]) == ("miss", "hit")
        a, b = named_events(first.text), named_events(second.text)
        assert text_of(a) == text_of(b) == EXPECTED
        assert [n for n, _ in a][-1] == [n for n, _ in b][-1]
        if path == "/responses":
            check_events(b, conforms)
        plain = httpx.post(f"{gw.base_url}{path}", json=body, timeout=30)
        assert plain.headers["x-gateway-cache"] == "hit", "one entry serves streamed and plain answers"
