"""The response cache through the gateway, on a real Redis: hits, misses, bypass, TTL, streams, stale-if-error."""

from __future__ import annotations

import time
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims, start_gateway  # noqa: F401
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

JSON = {"content-type": "application/json"}  # a raw body, sent as JSON
MSGS = [{"role": "user", "content": "Cache me"}]


def cache_config(s: Sims, prefix: str, **route: Any) -> dict[str, Any]:
    return {
        "redis": {"url": require_redis(), "prefix": prefix},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{s.b.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"},
                        {"name": "b", "provider": "vllm-b", "model": "vllm-model"}],
        "routes": [{"name": "cached", "deployments": ["a", "b"], "stream_continuation": False,
                    "timeouts": {"connect_s": 1, "read_s": 2, "total_s": 10},
                    "retry": {"max_attempts": 2, "backoff_base_s": 0.01},
                    "cache": {"ttl_s": 60, "stale_grace_s": 600, **route}}],
        "health_checks": {"interval_s": 5},
    }


@pytest.fixture
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    with start_gateway(sims, cache_config(sims, unique_prefix())) as g:
        yield g
    sims.reset()


def chat(g: GatewayProcess, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.post(f"{g.base_url}/chat/completions", headers=headers, timeout=30,
                      json={"model": "cached", "messages": MSGS, "temperature": 0, **body})


def backend_calls(s: Sims) -> int:
    return s.a.count("/v1/chat/completions") + s.b.count("/v1/chat/completions")


def test_identical_request_twice_second_never_reaches_backend(gw: GatewayProcess, sims: Sims) -> None:
    first = chat(gw)
    assert first.headers["x-gateway-cache"] == "miss"
    second = chat(gw)
    assert second.headers["x-gateway-cache"] == "hit"
    assert second.headers["x-gateway-deployment"] == "cache"
    assert second.json() == first.json()
    assert backend_calls(sims) == 1


@pytest.mark.parametrize("change", [{"temperature": 0.5, "seed": 1}, {"seed": 7}, {"max_tokens": 5},
                                    {"messages": [{"role": "user", "content": "Cache me!"}]}])
def test_differing_requests_never_falsely_hit(gw: GatewayProcess, sims: Sims, change: dict) -> None:
    chat(gw)
    r = chat(gw, **change)
    assert r.headers["x-gateway-cache"] == "miss"
    assert backend_calls(sims) == 2


def test_sampled_requests_bypass_and_key_order_does_not_matter(gw: GatewayProcess, sims: Sims) -> None:
    r = chat(gw, temperature=1.0)
    assert r.headers["x-gateway-cache"] == "bypass"
    assert chat(gw, temperature=1.0).headers["x-gateway-cache"] == "bypass"
    raw1 = b'{"model": "cached", "temperature": 0, "messages": [{"content": "Order", "role": "user"}]}'
    raw2 = b'{"messages": [{"role": "user", "content": "Order"}], "model": "cached", "temperature": 0, "user": "u1"}'
    assert httpx.post(f"{gw.base_url}/chat/completions", content=raw1, headers=JSON).headers["x-gateway-cache"] == "miss"
    assert httpx.post(f"{gw.base_url}/chat/completions", content=raw2, headers=JSON).headers["x-gateway-cache"] == "hit"


def test_cache_control_headers_and_ttl(gw: GatewayProcess, sims: Sims) -> None:
    chat(gw)
    refreshed = chat(gw, headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-gateway-cache"] == "miss" and backend_calls(sims) == 2
    assert chat(gw).headers["x-gateway-cache"] == "hit"
    nostore = chat(gw, headers={"Cache-Control": "no-store"}, max_tokens=3)
    assert nostore.headers["x-gateway-cache"] == "bypass"
    assert chat(gw, max_tokens=3).headers["x-gateway-cache"] == "miss", "no-store wrote nothing"
    before = time.monotonic()
    short = chat(gw, headers={"x-gateway-cache-ttl": "2"}, max_tokens=4)
    assert short.headers["x-gateway-cache"] == "miss"
    hit = chat(gw, max_tokens=4)
    if time.monotonic() - before < 2:  # asked within the TTL (a machine too busy for that skips this check)
        assert hit.headers["x-gateway-cache"] == "hit"
    wait_until(lambda: chat(gw, max_tokens=4).headers["x-gateway-cache"] == "miss", timeout=30, interval=0.1,
               what="the end of the client's 2 s TTL")
    assert time.monotonic() - before >= 2, "expired before its TTL"
    bad = chat(gw, headers={"x-gateway-cache-ttl": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-gateway-cache-ttl"


def test_stream_replay_from_a_non_streamed_original(gw: GatewayProcess, sims: Sims) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    original = client.chat.completions.create(model="cached", messages=MSGS, temperature=0)
    raw = client.chat.completions.with_raw_response.create(model="cached", messages=MSGS, temperature=0,
                                                           stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-gateway-cache"] == "hit"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id for c in chunks)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == original.choices[0].message.content == canonical_reply(MSGS)
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].choices[0].finish_reason == original.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == original.usage.model_dump()
    assert backend_calls(sims) == 1


def test_streamed_original_is_stored_only_when_complete(gw: GatewayProcess, sims: Sims) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="cached", messages=MSGS, temperature=0, stream=True))
    again = list(client.chat.completions.create(model="cached", messages=MSGS, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in again) == canonical_reply(MSGS)
    hit = chat(gw)
    assert hit.headers["x-gateway-cache"] == "hit", "the complete stream was stored; the broken one was not"
    assert hit.json()["choices"][0]["message"]["content"] == canonical_reply(MSGS)
    assert backend_calls(sims) == 2


def test_stale_entry_answers_when_every_deployment_fails(sims: Sims) -> None:
    sims.reset()
    with start_gateway(sims, cache_config(sims, unique_prefix(), ttl_s=1)) as g:
        assert chat(g).headers["x-gateway-cache"] == "miss"
        time.sleep(1.2)
        sims.a.set_fault(Fault.status(503))
        sims.b.set_fault(Fault.status(503))
        r = chat(g)
        assert r.status_code == 200
        assert r.headers["x-gateway-degraded"] == "stale-cache"
        assert r.json()["choices"][0]["message"]["content"] == canonical_reply(MSGS)
    sims.reset()
