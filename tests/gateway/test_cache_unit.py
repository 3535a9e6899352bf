"""Response cache units: keys, directives, the Redis and in-memory stores, stream assembly and replay.

Store tests run against a real Redis (REDIS_URL, default DB 15) under a unique
key prefix per test, and clean up only their own keys.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator
from uuid import uuid4

import openai.types.chat as oai_chat
import orjson
import pytest
import redis.asyncio as aioredis
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion

from backends.contract.assembler import StreamAssembler
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from backends.contract.responses import DONE, sse
from gateway.cache import MemoryResponseCache, ResponseCache, cache_control, cache_key, is_deterministic, response_cache
from gateway.cache_replay import replay, split_text
from gateway.store_errors import StoreUnavailable
from tests.waiting import wait_until_async

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def _asked(chat: bool, usage: bool) -> SamplingFields:
    """A streamed request of either endpoint, with or without usage, to replay a cached body for."""
    base = {"model": "m", "stream": True, **({"stream_options": {"include_usage": True}} if usage else {})}
    if chat:
        return ChatCompletionRequest.model_validate({**base, "messages": [{"role": "user", "content": "hi"}]})
    return CompletionRequest.model_validate({**base, "prompt": "hi"})


CHAT_USAGE, CHAT_PLAIN = _asked(True, True), _asked(True, False)
LEGACY_USAGE, LEGACY_PLAIN = _asked(False, True), _asked(False, False)

# ---------------------------------------------------------------- keys and directives

def key(body: dict[str, Any], ns: str = "tenant", ep: str = "chat") -> str:
    return cache_key(ns, ep, body)


def test_key_ignores_order_and_transport_fields() -> None:
    base = key(CHAT)
    assert len(base) == 64
    assert key(dict(reversed(list(CHAT.items())))) == base
    for extra in ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}, {"user": "u1"},
                  {"metadata": {"a": "b"}}, {"store": True}, {"service_tier": "flex"}, {"safety_identifier": "x"},
                  {"prompt_cache_key": "k"}, {"prompt_cache_retention": "24h"}, {"prompt_cache_options": {"mode": "x"}},
                  {"top_p": None}):
        assert key({**CHAT, **extra}) == base, extra


@pytest.mark.parametrize("change", [
    {"temperature": 0.5}, {"seed": 1}, {"messages": [{"role": "user", "content": "hello"}]},
    {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"response_format": {"type": "json_object"}},
    {"n": 2}, {"model": "other"}, {"tool_choice": "required"}, {"logprobs": True}, {"top_k": 5},
    {"moderation": {"type": "auto"}},
])
def test_key_changes_with_output_fields(change: dict[str, Any]) -> None:
    assert key({**CHAT, **change}) != key(CHAT)


def test_key_normalises_max_tokens_stop_and_scope() -> None:
    assert key({**CHAT, "max_tokens": 10}) == key({**CHAT, "max_completion_tokens": 10})
    assert key({**CHAT, "max_tokens": 10}) != key({**CHAT, "max_completion_tokens": 11})
    assert key({**CHAT, "max_tokens": 5, "max_completion_tokens": 10}) == key({**CHAT, "max_tokens": 10})
    assert key({**CHAT, "stop": "\n"}) == key({**CHAT, "stop": ["\n"]})
    assert key(CHAT, ns="a") != key(CHAT, ns="b")
    assert key(CHAT, ep="chat") != key(CHAT, ep="completions")


@pytest.mark.parametrize("body,expected", [
    ({}, False), ({"temperature": 0}, True), ({"temperature": 0.0}, True), ({"temperature": 0.7}, False),
    ({"seed": 42}, True), ({"temperature": 1.2, "seed": 0}, True), ({"seed": None}, False),
    ({"seed": "42"}, False), ({"seed": True}, False), ({"temperature": None}, False),
])
def test_is_deterministic(body: dict[str, Any], expected: bool) -> None:
    assert is_deterministic(body) is expected


def test_cache_control() -> None:
    d = cache_control({})
    assert (d.no_cache, d.no_store, d.ttl_s) == (False, False, None)
    d = cache_control({"Cache-Control": "No-Cache, max-age=0 ,NO-STORE"})
    assert (d.no_cache, d.no_store) == (True, True)
    d = cache_control({"cache-control": "no-store", "X-Gateway-Cache-TTL": " 2.5 "})
    assert (d.no_cache, d.no_store, d.ttl_s) == (False, True, 2.5)
    assert cache_control({"x-gateway-cache-ttl": "60"}).ttl_s == 60.0


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "", "nan", "inf"])
def test_cache_control_invalid_ttl(bad: str) -> None:
    with pytest.raises(ValueError, match="x-gateway-cache-ttl"):
        cache_control({"x-gateway-cache-ttl": bad})


# ---------------------------------------------------------------- stores

@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
    except Exception as exc:  # noqa: BLE001
        await client.aclose()
        pytest.fail(f"the Redis-backed cache tests need a real Redis at {REDIS_URL} ({exc!r}); run them with "
                    f"`make test` (tests/run.sh), which finds or starts one, or set REDIS_URL")
    prefix = f"test:{uuid4().hex}:"
    client.test_prefix = prefix  # type: ignore[attr-defined]
    yield client
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> ResponseCache:
    if request.param == "memory":
        return response_cache(None, max_entries=100)
    client = request.getfixturevalue("redis_client")
    return response_cache(client, prefix=client.test_prefix, timeout_s=1.0)


BODY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "system_fingerprint": "fp",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "héllo ✓", "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


async def test_put_get_round_trip(store: ResponseCache) -> None:
    k = key(CHAT)
    assert await store.get(k) is None
    assert await store.put(k, BODY, ttl_s=60) is True
    entry = await store.get(k)
    assert entry is not None and entry.body == BODY and entry.fresh
    assert 0 <= entry.age_s < 5 and entry.fresh_until - entry.stored_at == pytest.approx(60)
    entry.body["choices"] = []  # callers may mutate what they get
    assert (await store.get(k)).body == BODY
    await store.delete(k)
    assert await store.get(k) is None


async def test_redis_key_layout_and_expiry(redis_client: aioredis.Redis) -> None:
    cache = response_cache(redis_client, prefix=redis_client.test_prefix, timeout_s=1.0)
    await cache.put("abc", BODY, ttl_s=10, stale_grace_s=5)
    rkey = f"{redis_client.test_prefix}cache:abc"
    assert orjson.loads(await redis_client.get(rkey))["body"] == BODY
    assert 14_000 < await redis_client.pttl(rkey) <= 15_000


async def test_fresh_then_stale_then_gone(store: ResponseCache) -> None:
    """Windows of a second or more, watched by polling: a busy machine only makes the test slower. Each
    change must come at its time, never before (entries keep wall-clock times, so `time.time()` here)."""
    ttl, grace = 1.0, 1.5
    before = time.time()
    await store.put("k", BODY, ttl_s=ttl, stale_grace_s=grace)
    entry = await store.get("k")
    if time.time() < before + ttl:  # read within its TTL (a machine too busy for that skips this check)
        assert entry is not None and entry.fresh
    while True:  # fresh until its TTL ends ...
        entry = await store.get("k")
        assert entry is not None, "gone without ever being stale"
        if not entry.fresh:
            break
        await asyncio.sleep(0.02)
    assert time.time() >= before + ttl and entry.body == BODY, "stale before its TTL ended"

    async def gone() -> bool:
        return await store.get("k") is None

    await wait_until_async(gone, timeout=30, interval=0.02, what="the end of the stale grace")  # ... then stale ...
    assert time.time() >= before + ttl + grace - 0.01, "gone before its stale grace ended"  # ... then gone


async def test_max_entry_bytes(store: ResponseCache) -> None:
    big = {**BODY, "choices": [{**BODY["choices"][0], "message": {"role": "assistant", "content": "x" * 5000}}]}
    assert await store.put("big", big, ttl_s=60, max_entry_bytes=4096) is False
    assert await store.get("big") is None
    assert await store.put("big", big, ttl_s=60, max_entry_bytes=8192) is True


async def test_memory_lru_eviction() -> None:
    cache = MemoryResponseCache(max_entries=3)
    for k in "abc":
        await cache.put(k, {"k": k}, ttl_s=60)
    assert await cache.get("a") is not None  # a is now most recently used
    await cache.put("d", {"k": "d"}, ttl_s=60)
    assert await cache.get("b") is None
    assert [k for k in "acd" if await cache.get(k)] == ["a", "c", "d"]
    assert len(cache.memory) == 3


async def test_redis_unreachable_raises_store_unavailable_fast() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, db=15, socket_connect_timeout=0.2)
    cache = response_cache(client, prefix=f"test:{uuid4().hex}:", timeout_s=0.1)
    try:
        for op in (cache.get("k"), cache.put("k", BODY, ttl_s=1), cache.delete("k")):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable):
                await op
            # The cache's own 0.1 s bound, with room for a busy machine; redis-py's retries alone take about 4 s.
            assert time.monotonic() - t0 < 2.0
    finally:
        await client.aclose()


# ---------------------------------------------------------------- streams

HEAD = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1700000000, "model": "m",
        "system_fingerprint": "fp_1"}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
    return sse({**HEAD, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
                "usage": None})


USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
USAGE_FRAME = sse({**HEAD, "choices": [], "usage": USAGE})


def chat_stream() -> list[bytes]:
    return [b": keep-alive\n\n", chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}),
            chunk({"content": ", world"}), chunk({"content": "!"}), chunk({}, "stop"), USAGE_FRAME, DONE]


def assemble(frames: list[bytes]) -> StreamAssembler:
    asm = StreamAssembler()
    for f in frames:
        asm.feed(f)
    return asm


def test_assembler_chat() -> None:
    body = assemble(chat_stream()).result()
    assert body == {"id": "chatcmpl-s", "object": "chat.completion", "created": 1700000000, "model": "m",
                    "system_fingerprint": "fp_1",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, world!",
                                                         "refusal": None},
                                 "logprobs": None, "finish_reason": "stop"}],
                    "usage": USAGE}
    oai_chat.ChatCompletion.model_validate(body)


def test_assembler_incomplete_streams() -> None:
    frames = chat_stream()
    no_done = assemble(frames[:-1])
    assert not no_done.complete and no_done.result() is None
    no_finish = assemble(frames[:5] + [USAGE_FRAME, DONE])
    assert not no_finish.complete and no_finish.result() is None
    err = sse({"error": {"message": "boom", "type": "server_error", "param": None, "code": None}})
    errored = assemble(frames[:5] + [err, DONE])
    assert errored.result() is None
    assert assemble([DONE]).result() is None


def test_assembler_tool_calls_and_defaults() -> None:
    head = {**HEAD}
    head.pop("system_fingerprint")

    def c(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    frames = [c({"role": "assistant", "content": None}),
              c({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                 "function": {"name": "get_weather", "arguments": ""}}]}),
              c({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
              c({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                 "function": {"name": "get_time", "arguments": "{}"}}]}),
              c({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
              c({}, "tool_calls"), DONE]
    body = assemble(frames).result()
    assert body["system_fingerprint"] == "fp_cache" and body["usage"] is None
    msg = body["choices"][0]["message"]
    assert msg["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    assert msg["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    oai_chat.ChatCompletion.model_validate({**body, "usage": USAGE})


def test_assembler_legacy_completion() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m", "system_fingerprint": None}

    def c(text: str, finish: str | None = None, index: int = 0) -> bytes:
        return sse({**head, "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish}]})

    frames = [c("Once"), c("A", index=1), c(" upon"), c("", "length"), c("", "stop", index=1),
              sse({**head, "choices": [], "usage": USAGE}), DONE]
    body = assemble(frames).result()
    assert body["object"] == "text_completion" and body["usage"] == USAGE
    assert [(ch["index"], ch["text"], ch["finish_reason"]) for ch in body["choices"]] == [
        (0, "Once upon", "length"), (1, "A", "stop")]
    Completion.model_validate(body)


def test_split_text_keeps_every_character() -> None:
    for text in ["", "x", "  lead and trail  ", "one two\n\nthree\tfour " * 20, "ümlaut ✓ " * 9]:
        assert "".join(split_text(text)) == text
    assert len(split_text("word " * 100)) > 5


async def frames_of(gen: AsyncIterator[bytes]) -> list[bytes]:
    return [f async for f in gen]


def parse(frames: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for f in frames:
        assert f.startswith(b"data: ") and f.endswith(b"\n\n")
        data = f[6:-2]
        out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


LONG = "The quick brown fox jumps over the lazy dog. " * 6 + "\nEnd."
STORED = {**BODY, "id": "chatcmpl-r", "system_fingerprint": "fp_x",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": LONG, "refusal": None},
                       "logprobs": None, "finish_reason": "length"}]}


async def test_replay_chat_order_and_content() -> None:
    events = parse(await frames_of(replay(STORED, CHAT_USAGE)))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    usage_chunk, body_chunks = chunks[-1], chunks[:-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == STORED["usage"]
    assert body_chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert body_chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    middle = body_chunks[1:-1]
    assert len(middle) > 3 and all(ch["choices"][0]["finish_reason"] is None for ch in middle)
    assert "".join(ch["choices"][0]["delta"]["content"] for ch in middle) == LONG
    for ch in chunks:
        assert (ch["id"], ch["created"], ch["model"], ch["system_fingerprint"]) == ("chatcmpl-r", 1, "m", "fp_x")
        assert ch["object"] == "chat.completion.chunk"
        oai_chat.ChatCompletionChunk.model_validate(ch)
    assert all(ch["usage"] is None for ch in body_chunks)

    no_usage = parse(await frames_of(replay(STORED, CHAT_PLAIN)))
    assert all("usage" not in ch for ch in no_usage[:-1]) and no_usage[-2]["choices"][0]["finish_reason"]


async def sdk_final(frames: list[bytes]) -> Any:
    """What the OpenAI SDK's own stream accumulator makes of our frames."""
    state = ChatCompletionStreamState()
    for ev in parse(frames)[:-1]:
        state.handle_chunk(oai_chat.ChatCompletionChunk.model_validate(ev))
    return state.get_final_completion()


async def test_replay_round_trip_chat() -> None:
    frames = await frames_of(replay(STORED, CHAT_USAGE))
    assert assemble(frames).result() == STORED
    stopped = {**STORED, "choices": [{**STORED["choices"][0], "finish_reason": "stop"}]}  # SDK raises on length
    final = await sdk_final(await frames_of(replay(stopped, CHAT_USAGE)))
    assert final.choices[0].message.content == LONG and final.choices[0].finish_reason == "stop"
    assert final.usage.total_tokens == 5
    # A stream that was assembled, stored and replayed is the same stream body again.
    original = assemble(chat_stream()).result()
    assert assemble(await frames_of(replay(original, CHAT_USAGE))).result() == original


async def test_replay_round_trip_tool_calls_and_n() -> None:
    tools = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
             {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]
    body = {**STORED, "choices": [
        {"index": 0, "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": tools},
         "logprobs": None, "finish_reason": "tool_calls"},
        {"index": 1, "message": {"role": "assistant", "content": "second", "refusal": None},
         "logprobs": None, "finish_reason": "stop"}]}
    frames = await frames_of(replay(body, CHAT_USAGE))
    assert assemble(frames).result() == body
    final = await sdk_final(frames)
    assert [tc.function.arguments for tc in final.choices[0].message.tool_calls] == ['{"a": 1}', "{}"]
    assert final.choices[1].message.content == "second"
    oai_chat.ChatCompletion.model_validate(body)


async def test_replay_round_trip_logprobs() -> None:
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}], "refusal": None}
    body = {**STORED, "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
                                   "logprobs": lp, "finish_reason": "stop"}]}
    frames = await frames_of(replay(body, CHAT_USAGE))
    for ev in parse(frames)[:-1]:
        oai_chat.ChatCompletionChunk.model_validate(ev)
    assert assemble(frames).result() == body


async def test_replay_legacy_completion() -> None:
    body = {"id": "cmpl-9", "object": "text_completion", "created": 7, "model": "m", "system_fingerprint": "fp_c",
            "choices": [{"index": 0, "text": LONG, "logprobs": None, "finish_reason": "length"},
                        {"index": 1, "text": "", "logprobs": None, "finish_reason": "stop"}],
            "usage": USAGE}
    frames = await frames_of(replay(body, LEGACY_USAGE))
    events = parse(frames)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == USAGE
    for ev in events[:-2]:
        assert "usage" not in ev and ev["object"] == "text_completion" and ev["id"] == "cmpl-9"
        if ev["choices"][0]["finish_reason"]:  # the SDK types finish_reason as non-null, even for chunks
            Completion.model_validate(ev)
    zero = [ev["choices"][0] for ev in events[:-2] if ev["choices"][0]["index"] == 0]
    assert "".join(c["text"] for c in zero) == LONG
    assert zero[-1] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    assert all(c["finish_reason"] is None for c in zero[:-1])
    assert assemble(frames).result() == body
    no_usage = parse(await frames_of(replay(body, LEGACY_PLAIN)))
    assert all(ev["choices"] for ev in no_usage[:-1])
