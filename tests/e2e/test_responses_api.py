"""The Responses API with the official `openai` SDK against a real gateway and the real Gemma GGUF.

Every body and every streamed event is checked against OpenAI's schemas (`Response`, `ResponseStreamEvent`).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import MODEL
from tests.server import GatewayProcess
from tests.sse import named_events

pytestmark = pytest.mark.e2e


# The specific schema of each event type (ResponseStreamEvent is an anyOf of them, which says little on failure).
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent", "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent", "error": "ResponseErrorEvent",
}


def check_events(events: list[tuple[str, dict]], conforms) -> None:
    """Each event names itself, conforms to its own schema and to ResponseStreamEvent, in sequence."""
    for name, data in events:
        assert data["type"] == name
        conforms(EVENT_SCHEMAS[name], data)
        conforms("ResponseStreamEvent", data)
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))


def test_create_text_then_get_and_delete(client: openai.OpenAI, gateway: GatewayProcess, conforms) -> None:
    r = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=12, temperature=0,
                                instructions="You are terse.", metadata={"team": "e2e"})
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.model == MODEL
    assert r.output_text, "the SDK's output_text joins the output_text parts"
    assert r.usage.output_tokens <= 12
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.instructions == "You are terse." and r.metadata == {"team": "e2e"}
    raw = httpx.get(f"{gateway.base_url}/responses/{r.id}", timeout=10)
    assert raw.status_code == 200
    conforms("Response", raw.json())
    assert raw.json()["output"] == [item.model_dump(mode="json", exclude_unset=True) for item in r.output] or \
        raw.json()["id"] == r.id
    got = client.responses.retrieve(r.id)
    assert got.output_text == r.output_text
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_create_body_conforms(gateway: GatewayProcess, conforms) -> None:
    raw = httpx.post(f"{gateway.base_url}/responses", timeout=60, json={
        "model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}],
        "max_output_tokens": 3, "temperature": 0, "store": False})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    conforms("Response", body)
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3
    assert httpx.get(f"{gateway.base_url}/responses/{body['id']}", timeout=10).status_code == 404, \
        "store: false keeps nothing"


def test_stream_events_in_order_and_conform(client: openai.OpenAI, gateway: GatewayProcess, conforms) -> None:
    raw = httpx.post(f"{gateway.base_url}/responses", timeout=60, json={
        "model": MODEL, "input": "Say hello.", "max_output_tokens": 10, "temperature": 0, "stream": True})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = named_events(raw.text)
    check_events(events, conforms)
    names = [n for n, _ in events]
    assert names[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert names[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          names[-1]] and names[-1] in ("response.completed", "response.incomplete")
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    final = events[-1][1]["response"]
    assert final["output"][0]["content"][0]["text"] == deltas
    assert final["usage"]["output_tokens"] >= 1
    # The SDK's own stream helper agrees with the wire.
    # (Its get_final_response() insists on response.completed; a cut-off answer ends with response.incomplete.)
    with client.responses.stream(model=MODEL, input="Say hello.", max_output_tokens=10, temperature=0) as stream:
        seen = list(stream)
    text = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    assert seen[-1].type == names[-1] and seen[-1].response.output_text == text == deltas, \
        "temperature 0: the same answer twice"


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["colour", "count"], "additionalProperties": False}
    r = client.responses.create(model=MODEL, input="Give a colour and a count as JSON.", temperature=0,
                                max_output_tokens=60,
                                text={"format": {"type": "json_schema", "name": "pick", "schema": schema,
                                                 "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


def test_input_items_of_a_stored_response(client: openai.OpenAI, gateway: GatewayProcess, conforms) -> None:
    r = client.responses.create(model=MODEL, max_output_tokens=2, temperature=0, input=[
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    raw = httpx.get(f"{gateway.base_url}/responses/{r.id}/input_items", timeout=10)
    assert raw.status_code == 200
    conforms("ResponseItemList", raw.json())
    items = client.responses.input_items.list(r.id, order="asc")
    assert [i.role for i in items.data] == ["developer", "user"] and items.data[1].content[0].text == "Hi"
    newest = client.responses.input_items.list(r.id, limit=1)
    assert newest.data[0].role == "user" and newest.has_more
    assert client.responses.input_items.list(r.id, after=newest.data[0].id).data[0].role == "developer"
    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(r.id, limit=0)


def test_previous_response_id_carries_the_conversation(client: openai.OpenAI, gateway: GatewayProcess) -> None:
    first = client.responses.create(model=MODEL, input="My name is Ada. Reply OK.", max_output_tokens=5,
                                    temperature=0)
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=8, temperature=0)
    assert second.previous_response_id == first.id
    alone = client.responses.create(model=MODEL, input="What is my name?", max_output_tokens=8, temperature=0)
    # The carried conversation is in the prompt: more input tokens than the question alone.
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens


def test_client_errors_name_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools[0].type" and err.value.body["code"] == "unsupported_tool"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input=[{"type": "message", "role": "wizard", "content": "hi"}])
    assert err.value.body["param"] == "input[0].role"
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=MODEL, input=[])
    assert err.value.body["param"] == "input"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")


def test_top_logprobs_on_the_local_model(gateway: GatewayProcess, conforms) -> None:
    body = {"model": MODEL, "input": "Say hello.", "max_output_tokens": 5, "temperature": 0, "top_logprobs": 2,
            "store": False}
    plain = httpx.post(f"{gateway.base_url}/responses", json=body, timeout=60).json()
    conforms("Response", plain)
    part = plain["output"][0]["content"][0]
    assert len(part["logprobs"]) == plain["usage"]["output_tokens"]
    assert "".join(lp["token"] for lp in part["logprobs"]) == part["text"]
    assert all(len(lp["top_logprobs"]) == 2 and lp["logprob"] <= 0 for lp in part["logprobs"])
    events = named_events(httpx.post(f"{gateway.base_url}/responses", json={**body, "stream": True}, timeout=60,
                                    headers={"Cache-Control": "no-cache"}).text)
    check_events(events, conforms)
    streamed = [lp for n, d in events if n == "response.output_text.delta" for lp in d["logprobs"]]
    assert [lp["token"] for lp in streamed] == [lp["token"] for lp in part["logprobs"]]
    final = events[-1][1]["response"]["output"][0]["content"][0]
    assert final["logprobs"] == streamed
