"""Failover, outages and key limits seen through the gRPC API (a real grpcio client, a real gateway process
on two simulated vLLM replicas, keys and limits in real Redis): a stream cut midway is continued on the
other deployment and reaches the client as one uninterrupted stream; a 5xx/429 is answered by the other
deployment; every deployment down is UNAVAILABLE; a key's model list, budget and rate limit are
PERMISSION_DENIED and RESOURCE_EXHAUSTED, each with the OpenAI error in the `x-openai-error` trailer; a
stream is billed to the key's budget, also when its client cancels it midway.

One gateway for the module (a process start is the slow part); each test resets the simulators' faults."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
import redis as redis_sync
from google.protobuf import json_format

from gateway.grpc_api.codegen import load
from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess, free_port
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process

MASTER = "sk-master-grpc-failover-0123456789"
AUTH = (("authorization", f"Bearer {MASTER}"),)
MESSAGES = [{"role": "user", "content": "tell me about foxes over grpc"}]
EXPECTED = canonical_reply(MESSAGES)
PRICE = 1000.0  # USD per million tokens on deployment b: one answer costs a few cents of a key's budget
pb2, pb2_grpc = load()


def config(s: Sims, grpc_port: int, redis_url: str, prefix: str) -> dict[str, Any]:
    fast = {"connect_s": 1.0, "read_s": 1.0, "total_s": 10.0}
    retry = {"max_attempts": 3, "backoff_base_s": 0.02, "backoff_max_s": 0.2, "retry_after_cap_s": 1.0}
    return {
        "server": {"grpc": {"enabled": True, "port": grpc_port}},
        "redis": {"url": redis_url, "prefix": prefix},
        "usage": {"flush_interval_s": 0.2},
        "cache": {"enabled": False},  # every answer comes from a deployment (a stale entry would hide an outage)
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{s.b.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"},
                        {"name": "b", "provider": "vllm-b", "model": "vllm-model", "cost_per_mtok": PRICE}],
        "routes": [{"name": "chat", "deployments": ["a", "b"], "timeouts": fast, "retry": retry},
                   {"name": "other", "deployments": ["b"], "timeouts": fast}],
        # The breaker stays shut: one test's failures must not steer the next test's requests.
        "breaker": {"failure_threshold": 1000, "min_requests": 1000},
        "health_checks": {"enabled": False},  # nor a health check (a stopped simulator stays "healthy")
    }


@dataclass
class Served:
    g: GatewayProcess
    channel: grpc.Channel
    redis: redis_sync.Redis
    prefix: str


@pytest.fixture(scope="module")
def served(sims: Sims) -> Iterator[Served]:
    sims.reset()
    url, prefix, port = require_redis(), unique_prefix(), free_port()
    client = redis_sync.Redis.from_url(url)
    try:
        with (GatewayProcess(config(sims, port, url, prefix), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g,
              grpc.insecure_channel(f"127.0.0.1:{port}") as channel):
            grpc.channel_ready_future(channel).result(timeout=20)
            yield Served(g, channel, client, prefix)
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        sims.reset()


@pytest.fixture
def gateway(sims: Sims, served: Served) -> tuple[GatewayProcess, Any]:
    """The module's gateway and a ChatService stub, on simulators without faults."""
    sims.reset()
    return served.g, pb2_grpc.ChatServiceStub(served.channel)


def request(**fields: Any) -> Any:
    return json_format.ParseDict({"model": "chat", "messages": MESSAGES, **fields}, pb2.ChatCompletionRequest())


def openai_error(exc: grpc.RpcError) -> dict[str, Any]:
    trailers = dict(exc.trailing_metadata() or ())
    return json.loads(trailers["x-openai-error"])["error"]


def log_line(g: GatewayProcess, request_id: str) -> dict[str, Any]:
    """The request's log line, once it is written."""
    def find() -> list[dict[str, Any]]:
        return [json.loads(x) for x in g.logs(None).splitlines()
                if x.startswith('{"ts"') and f'"request_id":"{request_id}"' in x.replace(" ", "")]

    return wait_until(find, timeout=5, what=f"the log line of {request_id}")[0]


def model_calls(sim: Any) -> list[dict[str, Any]]:
    return [r.body for r in sim.requests if r.path == "/v1/chat/completions" and r.method == "POST"]


def text_of(chunks: list[Any]) -> str:
    return "".join(ch.delta.content for c in chunks for ch in c.choices)


def new_key(g: GatewayProcess, **fields: Any) -> dict[str, Any]:
    """A virtual key made through the admin API: its record, with the secret under "key"."""
    r = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, timeout=10,
                   json={"alias": "grpc", **fields})
    assert r.status_code == 201, r.text
    return r.json()


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


@pytest.mark.parametrize("broken", [Fault.cut_stream(after_chunks=4), Fault.stall(after_chunks=4, seconds=5.0)],
                         ids=["cut", "stall"])
def test_a_stream_broken_midway_is_continued_on_the_other_deployment(
        sims: Sims, gateway: tuple[GatewayProcess, Any], broken: Fault) -> None:
    """Cut: the connection drops after the role chunk and three words. Stall: a goes quiet after them for
    longer than the route's read_s of 1 s."""
    g, stub = gateway
    sims.a.add_fault(broken)
    rid = f"grpc-continued-{broken.kind}"
    chunks = list(stub.StreamChatCompletion(request(stream_options={"include_usage": True}), timeout=10,
                                            metadata=(*AUTH, ("x-request-id", rid))))
    assert text_of(chunks) == EXPECTED  # no word lost, none repeated
    assert len({c.id for c in chunks}) == 1, "the continuation looks like one stream"
    assert [ch.delta.role for c in chunks for ch in c.choices if ch.delta.HasField("role")] == ["assistant"]
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.HasField("finish_reason")] == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens > 0
    continued = model_calls(sims.b)
    assert len(continued) == 1
    if broken.kind == "stall" or continued[0].get("continue_final_message"):
        # b was shown what a had sent, as its own unfinished message, to go on from.
        assert continued[0]["continue_final_message"] is True and continued[0]["messages"][-1]["role"] == "assistant"
        sent = continued[0]["messages"][-1]["content"]
        assert sent and EXPECTED.startswith(sent) and sent != EXPECTED
    else:  # the reset also threw away what the gateway had not read yet: no content, so b answered afresh
        assert continued[0]["messages"] == MESSAGES
    line = log_line(g, rid)
    assert line["status"] == 200 and line["stream"] is True and line["endpoint"] == "chat"
    assert line["deployment"] == "b" and line["attempts"] == 2, line


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_failing_first_deployment_is_answered_by_the_second(sims: Sims, gateway: tuple[GatewayProcess, Any],
                                                              status: int) -> None:
    g, stub = gateway
    sims.a.add_fault(Fault.status(status))
    rid = f"grpc-failover-{status}"
    reply = stub.CreateChatCompletion(request(temperature=0.0), metadata=(*AUTH, ("x-request-id", rid)), timeout=10)
    assert reply.choices[0].message.content == EXPECTED and reply.choices[0].finish_reason == "stop"
    assert sims.a.count("/v1/chat/completions") == 1 and sims.b.count("/v1/chat/completions") == 1
    line = log_line(g, rid)
    assert (line["status"], line["deployment"], line["attempts"]) == (200, "b", 2), line

    # The same before a stream's first chunk: the client never sees the failed attempt.
    sims.a.add_fault(Fault.status(status))
    chunks = list(stub.StreamChatCompletion(request(), metadata=AUTH, timeout=10))
    assert text_of(chunks) == EXPECTED
    assert sims.b.count("/v1/chat/completions") == 2


def test_every_deployment_failing_is_unavailable(sims: Sims, gateway: tuple[GatewayProcess, Any]) -> None:
    g, stub = gateway
    sims.a.set_fault(Fault.status(503))
    sims.b.set_fault(Fault.status(503))
    for rpc in (stub.CreateChatCompletion, lambda r, **kw: list(stub.StreamChatCompletion(r, **kw))):
        with pytest.raises(grpc.RpcError) as down:
            rpc(request(), metadata=(*AUTH, ("x-request-id", "grpc-all-503")), timeout=10)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE, down.value
        err = openai_error(down.value)
        assert err["message"] and down.value.details() == err["message"]  # the message; the body in the trailer
        assert "Traceback" not in down.value.details()
    assert sims.a.count("/v1/chat/completions") >= 2 and sims.b.count("/v1/chat/completions") >= 2
    line = log_line(g, "grpc-all-503")
    assert line["status"] == 503 and line["attempts"] >= 2, line


def test_every_deployment_unreachable_is_unavailable(sims: Sims, gateway: tuple[GatewayProcess, Any]) -> None:
    _, stub = gateway
    sims.a.stop()  # crashed, not just failing: every connection is refused
    sims.b.stop()
    with pytest.raises(grpc.RpcError) as gone:
        stub.CreateChatCompletion(request(), metadata=AUTH, timeout=10)
    assert openai_error(gone.value)["code"] == "upstream_unavailable"
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE, gone.value


def test_a_key_may_use_only_its_models(gateway: tuple[GatewayProcess, Any]) -> None:
    g, stub = gateway
    key = new_key(g, models=["other"])["key"]
    for rpc in (stub.CreateChatCompletion, lambda r, **kw: list(stub.StreamChatCompletion(r, **kw))):
        with pytest.raises(grpc.RpcError) as denied:
            rpc(request(), metadata=bearer(key), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, denied.value
        err = openai_error(denied.value)
        assert (err["type"], err["code"], err["param"]) == ("permission_error", "model_not_allowed", "model")
    assert [m.id for m in stub.ListModels(pb2.ListModelsRequest(), metadata=bearer(key), timeout=5).data] == ["other"]
    mine = stub.CreateChatCompletion(request(model="other"), metadata=bearer(key), timeout=10)
    assert mine.choices[0].message.content == EXPECTED
    models = stub.ListModels(pb2.ListModelsRequest(), metadata=AUTH, timeout=5)
    assert sorted(m.id for m in models.data) == ["chat", "other"]


def test_a_spent_budget_and_a_used_up_rate_limit_are_resource_exhausted(
        served: Served, gateway: tuple[GatewayProcess, Any]) -> None:
    g, stub = gateway
    broke = new_key(g, budget_usd=0, budget_period="total")["key"]
    for rpc in (stub.CreateChatCompletion, lambda r, **kw: list(stub.StreamChatCompletion(r, **kw))):
        with pytest.raises(grpc.RpcError) as spent:
            rpc(request(), metadata=bearer(broke), timeout=10)
        assert spent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, spent.value
        assert openai_error(spent.value)["code"] == "insufficient_quota"

    # A stream over gRPC spends the budget it was answered with, once: the next call finds it spent.
    thrifty = new_key(g, budget_usd=0.001, budget_period="total")
    chunks = list(stub.StreamChatCompletion(request(model="other", stream_options={"include_usage": True}),
                                            metadata=bearer(thrifty["key"]), timeout=10))
    usage = chunks[-1].usage
    cost = PRICE * (usage.prompt_tokens + usage.completion_tokens) / 1e6
    assert usage.completion_tokens > 0 and cost > 0.001
    spend_key = f"{served.prefix}spend:{thrifty['id']}:total"
    spent_usd = wait_until(lambda: float(served.redis.get(spend_key) or 0), timeout=5, what="the stream's spend")
    assert spent_usd == pytest.approx(cost, rel=1e-6)
    with pytest.raises(grpc.RpcError) as over:
        stub.CreateChatCompletion(request(model="other"), metadata=bearer(thrifty["key"]), timeout=10)
    assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert openai_error(over.value)["type"] == "insufficient_quota"

    limited = new_key(g, rpm=1)["key"]
    assert stub.CreateChatCompletion(request(), metadata=bearer(limited), timeout=10).choices[0].message.content
    with pytest.raises(grpc.RpcError) as limit:
        list(stub.StreamChatCompletion(request(), metadata=(*bearer(limited), ("x-request-id", "grpc-rpm")),
                                       timeout=10))
    assert limit.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, limit.value
    err = openai_error(limit.value)
    assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    line = log_line(g, "grpc-rpm")
    assert (line["status"], line["error_code"], line["key_alias"]) == (429, "rate_limit_exceeded", "grpc")


def test_a_stream_its_client_cancels_is_still_billed(served: Served, sims: Sims,
                                                     gateway: tuple[GatewayProcess, Any]) -> None:
    g, stub = gateway
    key = new_key(g, budget_usd=100, budget_period="total")
    sims.b.set_fault(Fault.chunk_delay(0.2))  # a stream long enough to leave in the middle of
    stream = stub.StreamChatCompletion(request(model="other"), metadata=bearer(key["key"]), timeout=10)
    got = 0
    for chunk in stream:
        got += sum(1 for ch in chunk.choices if ch.delta.content)
        if got >= 2:
            break
    stream.cancel()
    spend_key = f"{served.prefix}spend:{key['id']}:total"
    spent_usd = wait_until(lambda: float(served.redis.get(spend_key) or 0), timeout=5,
                           what="the cancelled stream's spend")
    sims.b.clear_faults()
    full = list(stub.StreamChatCompletion(request(model="other", stream_options={"include_usage": True}),
                                          metadata=AUTH, timeout=10))[-1].usage
    whole = PRICE * (full.prompt_tokens + full.completion_tokens) / 1e6
    assert 0 < spent_usd < whole, (spent_usd, whole)  # what it was sent (2-3 of 17 words), not nothing, not all
