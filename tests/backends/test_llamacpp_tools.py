"""Tool calling and logprobs on local models, without a model: plans and grammars, the answer's parsing,
the chat template's handling of tools, and how logprob entries line up with the emitted text."""

from __future__ import annotations

import ctypes
import json
import math

import pytest

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import ChatMessage
from backends.llamacpp.chat_template import ChatTemplate
from backends.llamacpp.logprobs import Pending, chat_content, completion_logprobs, entry
from backends.llamacpp.text_stream import StopTextStream
from backends.llamacpp.tools import ToolStream, plan_tools

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/N"}, "b": {"$ref": "#/$defs/N"}},
                                  "required": ["a", "b"], "$defs": {"N": {"type": "integer"}}}}}
SAY = {"type": "function", "function": {
    "name": "say", "parameters": {"type": "object", "properties": {"what": {"$ref": "#/$defs/N"}},
                                  "$defs": {"N": {"type": "string", "maxLength": 5}}}}}


# -- plans and grammars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tools,choice", [(None, "auto"), ([], None), ([WEATHER], "none")])
def test_no_plan_when_tools_play_no_part(tools, choice) -> None:
    assert plan_tools(tools, choice, None) is None


def test_auto_allows_a_response_required_does_not() -> None:
    auto = plan_tools([WEATHER, ADD], None, None)
    required = plan_tools([WEATHER, ADD], "required", None)
    assert auto.mode == "auto" and required.mode == "required"
    assert '"\\"response\\""' in auto.grammar and "response" not in required.grammar
    for g in (auto.grammar, required.grammar):
        assert '"\\"get_weather\\""' in g and '"\\"add\\""' in g and '"\\"tool_calls\\""' in g


def test_a_named_function_is_the_only_name_and_one_call() -> None:
    plan = plan_tools([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}, None)
    assert plan.forced == "add" and plan.names == ["add"] and not plan.parallel
    assert "get_weather" not in plan.grammar and "response" not in plan.grammar
    assert "get_weather" not in plan.instruction(describe=True) and '"add"' in plan.instruction(describe=True)


def test_parallel_tool_calls_false_allows_one_call() -> None:
    many = plan_tools([WEATHER], "required", None).grammar
    one = plan_tools([WEATHER], "required", False).grammar
    assert many != one
    calls_rule = next(line for line in one.splitlines() if line.startswith("tool-calls ::="))
    assert "," not in calls_rule  # no second item
    assert "," in next(line for line in many.splitlines() if line.startswith("tool-calls ::="))


def test_each_tools_defs_are_kept_apart() -> None:
    g = plan_tools([ADD, SAY], "required", None).grammar
    rules = dict(line.split(" ::= ", 1) for line in g.splitlines())
    # The integer N of `add` and the short string N of `say`, each where its own tool refers to it.
    assert rules["tool-calls-item-0-arguments-a"] == "integer"
    assert rules["tool-calls-item-1-arguments-what"] == "t1-N" and "char" in rules["t1-N"]


@pytest.mark.parametrize("tools,choice,param", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice.function.name"),
    ([WEATHER], {"type": "custom", "custom": {"name": "x"}}, "tool_choice"),
    ([WEATHER, {"type": "custom", "custom": {"name": "x"}}], "auto", "tools[1].type"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], "auto",
     "tools[0].function.parameters"),
    ([WEATHER, {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/x.json"}}}}}], "required",
     "tools[1].function.parameters"),
    ([{"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"x": {"type": "frob"}}}}}], "auto", "tools[0].function.parameters"),
])
def test_bad_tools_are_the_clients_400(tools, choice, param) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_tools(tools, choice, None)
    assert err.value.param == param


def test_parallel_tool_calls_must_be_a_boolean() -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_tools([WEATHER], "auto", "yes")  # type: ignore[arg-type]
    assert err.value.param == "parallel_tool_calls"


# -- reading the answer ---------------------------------------------------------------------------------

CALLS = ('{ "tool_calls" : [ {"name": "get_weather", "arguments": {"city": "Pa\\"ris \\u00e9\\ud83d\\ude00", '
         '"n": [1, {"x": 2.5e3}, true, null], "z": -3}} ,\n {"name":"add","arguments":{"a":1,"b":2}}]}')


def feed_in(pieces: list[str]) -> tuple[ToolStream, list[tuple]]:
    s = ToolStream()
    events = [ev for p in pieces for ev in s.feed(p)]
    return s, events


@pytest.mark.parametrize("size", [1, 2, 7, len(CALLS)])
def test_calls_parse_the_same_however_the_text_is_split(size: int) -> None:
    s, events = feed_in([CALLS[i:i + size] for i in range(0, len(CALLS), size)])
    content, calls = s.message()
    assert content is None and s.kind == "calls"
    assert [c["function"]["name"] for c in calls] == ["get_weather", "add"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": 'Pa"ris é😀', "n": [1, {"x": 2500.0}, True, None],
                                                              "z": -3}
    assert json.loads(calls[1]["function"]["arguments"]) == {"a": 1, "b": 2}
    assert all(c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    # The stream's events say the same: each call announced before its arguments, which add up.
    starts = [ev for ev in events if ev[0] == "call"]
    assert [(ev[1], ev[2], ev[3]) for ev in starts] == [(0, calls[0]["id"], "get_weather"), (1, calls[1]["id"], "add")]
    for n, call in enumerate(calls):
        args = [ev[2] for ev in events if ev[0] == "args" and ev[1] == n]
        assert "".join(args) == call["function"]["arguments"]
        assert events.index(starts[n]) < events.index(next(ev for ev in events if ev[0] == "args" and ev[1] == n))
        if size == 1:
            assert len(args) > 5  # the arguments go on as they are written
    assert not [ev for ev in events if ev[0] == "text"]


@pytest.mark.parametrize("size", [1, 3, 100])
def test_a_response_streams_as_plain_text(size: int) -> None:
    raw = '{"response": "Hi \\"you\\"\\n\\u00e9\\ud83d\\ude00 {\\"not\\": \\"a call\\"}"}'
    s, events = feed_in([raw[i:i + size] for i in range(0, len(raw), size)])
    text = 'Hi "you"\né😀 {"not": "a call"}'
    assert s.message() == (text, None) and s.kind == "text"
    assert {ev[0] for ev in events} == {"text"} and "".join(ev[1] for ev in events) == text


def test_a_cut_answer_keeps_what_was_written() -> None:
    s, _ = feed_in(['{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b'])
    content, calls = s.message()
    assert calls[0]["function"]["name"] == "add" and calls[0]["function"]["arguments"] == '{"a": 1, "b'
    s, _ = feed_in(['{"tool_calls": [{"na'])
    assert s.message() == ("", None)
    s, _ = feed_in(['{"response": "half an ans'])
    assert s.message() == ("half an ans", None)


# -- the chat template ------------------------------------------------------------------------------------

GEMMA_LIKE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
              "{% if add_generation_prompt %}<assistant>{% endif %}")
TOOLS_AWARE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }};"
    "{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}<call {{ c.function.name }} "
    "{{ c.function.arguments | tojson }}>{% endfor %}{% elif m.role == 'tool' %}<result {{ m.tool_call_id }}>"
    "{{ m.content }}{% else %}{% generation %}<{{ m.role }}>{{ m.content }}{% endgeneration %}{% endif %}{% endfor %}")

HISTORY = [
    ChatMessage(role="user", content="Weather in Paris?"),
    ChatMessage.model_validate({"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}),
    ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
]


def test_a_tools_aware_template_gets_tools_calls_and_results() -> None:
    t = ChatTemplate(TOOLS_AWARE)
    assert t.knows_tools and t.knows_tool_calls
    out = t.render(HISTORY, tools=[WEATHER], system="ANSWER IN JSON")
    assert out.startswith("<tools>get_weather:" + json.dumps(WEATHER["function"]["parameters"]))
    assert '<call get_weather {"city": "Paris"}>' in out  # arguments as an object, the HF convention
    assert "<result call_1>sunny" in out and "<system>ANSWER IN JSON" in out and "<user>Weather in Paris?" in out


def test_a_plain_template_gets_calls_as_json_and_the_instruction_in_the_system_turn() -> None:
    t = ChatTemplate(GEMMA_LIKE, bos_token="<bos>")
    assert not t.knows_tools and not t.knows_tool_calls
    system = plan_tools([WEATHER], "auto", None).instruction(describe=True)
    out = t.render([ChatMessage(role="system", content="Be brief."), *HISTORY], tools=[WEATHER], system=system)
    assert out.startswith(f"<bos><system>Be brief.\n\n{system}</system><user>Weather in Paris?</user>")
    assert '<assistant>{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}</assistant>' in out
    assert "<user>[tool result call_1 of get_weather]\nsunny</user><assistant>" in out
    assert "get_weather" in system and '"response"' in system
    assert t.render(HISTORY[:1]) == "<bos><user>Weather in Paris?</user><assistant>"


# -- logprobs ---------------------------------------------------------------------------------------------


def test_entry_is_the_log_softmax_of_the_raw_logits() -> None:
    logits = [0.5, 3.0, -1.0, 2.0, 3.0]
    arr = (ctypes.c_float * len(logits))(*logits)
    lse = math.log(sum(math.exp(x) for x in logits))
    piece, lp, alts = entry(arr, len(logits), 3, 3, b"tok", lambda t: f"<{t}>".encode())
    assert piece == b"tok" and lp == pytest.approx(2.0 - lse, abs=1e-6)
    assert [a[0] for a in alts] == [b"<1>", b"<4>", b"<3>"]  # best first, ties in vocabulary order
    assert [a[1] for a in alts] == pytest.approx([3.0 - lse, 3.0 - lse, 2.0 - lse], abs=1e-6)
    assert entry(arr, len(logits), 0, 0, b"x", bytes)[2] == []


def run_pending(pieces: list[bytes], stops: list[str]) -> tuple[str, list[bytes]]:
    """Feed tokens as an engine does; the emitted text and the tokens whose entries were released with it."""
    stream, pending = StopTextStream(stops), Pending()
    text, released = "", []
    for p in pieces:
        start = stream.decoded
        text += stream.feed(p)
        pending.add(start, stream.decoded, [p, -1.0, []])
        released += [e[0] for e in pending.take(stream, final=stream.stopped)]
        assert "".join(e.decode("utf-8", "replace") for e in released) == text or not text.endswith("\ufffd")
        if stream.stopped:
            break
    if not stream.stopped:
        text += stream.flush()
    released += [e[0] for e in pending.take(stream, final=True)]
    return text, released


def test_entries_wait_for_held_back_text_and_stop_strings_drop_theirs() -> None:
    pieces = [b"Hello", b" E", b"N", b"D", b" more"]
    assert run_pending(pieces, []) == ("Hello END more", pieces)
    assert run_pending(pieces, ["END"]) == ("Hello ", [b"Hello", b" E"])  # " E" straddles the cut
    assert run_pending(pieces, ["ENX"]) == ("Hello END more", pieces)  # held back, then let out
    multibyte = ["é".encode()[:1], "é".encode()[1:], b"!"]
    assert run_pending(multibyte, []) == ("é!", multibyte)


def test_openai_shapes() -> None:
    entries = [[b"Hi", -0.5, [[b"Hi", -0.5], [b"Yo", -1.5]]], [b"\xc3", -0.1, []]]
    content = chat_content(entries)
    assert content[0] == {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}, {"token": "Yo", "logprob": -1.5, "bytes": [89, 111]}]}
    assert content[1]["bytes"] == [0xC3]
    body, offset = completion_logprobs(entries, 10)
    assert body == {"tokens": ["Hi", "\ufffd"], "token_logprobs": [-0.5, -0.1],
                    "top_logprobs": [{"Hi": -0.5, "Yo": -1.5}, {}], "text_offset": [10, 12]}
    assert offset == 13
