"""The gRPC API (gateway/grpc_api) on the real local GGUF model: the session gateway of tests/conftest.py
serves it with `server.grpc` on, so no second model process is started. A unary answer counted by the
engine, a stream that is the same text as the unary answer at temperature 0, and a client that cancels
(a stream, or a unary call it stopped waiting for) frees the engine at once: the engine counts the job
cancelled and stops generating (its /ready stats, as the HTTP disconnect tests in
tests/backends/test_engine_lifecycle.py check). A cancelled call, unary or stream, is logged 499."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from gateway.grpc_api.codegen import load
from tests.conftest import MODEL
from tests.server import GatewayProcess
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

pb2, pb2_grpc = load()
HELLO = [{"role": "user", "content": "Say hello."}]
NO_STORE = (("cache-control", "no-store"),)  # decoded by the engine each time, never a cache hit
# Far more than the model writes before the client cancels (gRPC has no ignore_eos: the story must be long).
LONG = {"messages": [{"role": "user", "content": "Write a very long story."}], "max_tokens": 1500, "temperature": 0}


def request(**fields: Any) -> Any:
    return json_format.ParseDict({"model": MODEL, "messages": HELLO, **fields}, pb2.ChatCompletionRequest())


def meta(request_id: str) -> tuple[tuple[str, str], ...]:
    return (*NO_STORE, ("x-request-id", request_id))


@pytest.fixture(scope="module")
def stub(grpc_channel: grpc.Channel) -> Any:
    return pb2_grpc.ChatServiceStub(grpc_channel)


def log_line(g: GatewayProcess, request_id: str) -> dict[str, Any]:
    """The request's log line, once it is written."""
    def find() -> list[dict[str, Any]]:
        return [json.loads(x) for x in g.logs(None).splitlines()
                if x.startswith('{"ts"') and f'"request_id":"{request_id}"' in x.replace(" ", "")]

    return wait_until(find, timeout=10, what=f"the log line of {request_id}")[0]


def text_of(chunks: list[Any]) -> str:
    return "".join(ch.delta.content for c in chunks for ch in c.choices)


def test_unary_chat_on_the_local_model(gateway: GatewayProcess, stub: Any) -> None:
    before = gateway.ready_stats(MODEL)["tokens_generated"]
    reply, call = stub.CreateChatCompletion.with_call(request(max_tokens=12, temperature=0),
                                                      metadata=meta("grpc-local-unary"), timeout=60)
    assert dict(call.initial_metadata())["x-request-id"] == "grpc-local-unary"
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # The engine wrote it (not a cache), and the request log counted what the reply says.
    wait_until(lambda: gateway.ready_stats(MODEL)["tokens_generated"] - before >= usage.completion_tokens,
               timeout=5, what="the engine's token count")
    line = log_line(gateway, "grpc-local-unary")
    assert (line["status"], line["endpoint"], line["route"], line["stream"]) == (200, "chat", MODEL, False), line
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert [m.id for m in stub.ListModels(pb2.ListModelsRequest(), timeout=10).data] == [MODEL]


def test_a_stream_is_the_unary_answer_in_chunks(gateway: GatewayProcess, stub: Any) -> None:
    # Temperature 0 is greedy: the same tokens whatever the seed (so a temperature lost on the way shows).
    full = stub.CreateChatCompletion(request(max_tokens=24, temperature=0, seed=42), metadata=NO_STORE, timeout=60)
    chunks = list(stub.StreamChatCompletion(request(max_tokens=24, temperature=0, seed=7,
                                                    stream_options={"include_usage": True}),
                                            metadata=meta("grpc-local-stream"), timeout=60))
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1, "every chunk shares one id"
    assert text_of(chunks) == full.choices[0].message.content  # temperature 0: the same tokens
    assert [ch.delta.role for c in chunks for ch in c.choices if ch.delta.HasField("role")] == ["assistant"]
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.HasField("finish_reason")]
    assert finishes == [full.choices[0].finish_reason]
    assert not chunks[-1].choices and chunks[-1].usage == full.usage  # the usage chunk comes last
    line = log_line(gateway, "grpc-local-stream")
    assert (line["status"], line["stream"], line["completion_tokens"]) == (200, True, full.usage.completion_tokens)


def wait_idle(gateway: GatewayProcess, cancelled: int | None = None) -> dict[str, Any]:
    """The engine's stats once it is idle (and has cancelled `cancelled` jobs in all): its process pushes
    them a moment after the fact, so an idle snapshot alone may still be the one from before the job."""
    def idle() -> dict[str, Any] | None:
        stats = gateway.ready_stats(MODEL)
        done = stats["busy"] == 0 and (cancelled is None or stats["cancelled"] == cancelled)
        return stats if done else None

    return wait_until(idle, timeout=15, what=f"the engine idle (cancelled: {cancelled})")


def cancel_after_a_few_tokens(stub: Any, request_id: str) -> None:
    """Start the long story as a stream, read 5 tokens of it, cancel it."""
    stream = stub.StreamChatCompletion(request(**LONG), metadata=meta(request_id), timeout=120)
    got = 0
    for chunk in stream:
        got += sum(1 for ch in chunk.choices if ch.delta.content)
        if got >= 5:
            break
    assert got >= 5 and not any(ch.HasField("finish_reason") for ch in chunk.choices)
    stream.cancel()


def test_a_cancelled_stream_frees_the_engine(gateway: GatewayProcess, stub: Any) -> None:
    before = wait_idle(gateway)
    cancel_after_a_few_tokens(stub, "grpc-local-cancel")  # after a handful of tokens of a 1,500-token story
    after = wait_idle(gateway, cancelled=before["cancelled"] + 1)  # the engine dropped the job
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert generated < 100, f"generation went on for {generated} tokens after the client cancelled"
    assert log_line(gateway, "grpc-local-cancel")["stream"] is True  # the request was finished and recorded
    # And the engine serves the next call (with `parallel: 8` it would, next to a running story, too: the
    # stats above are what shows the story stopped).
    assert stub.CreateChatCompletion(request(max_tokens=3), metadata=NO_STORE, timeout=30).choices[0].message.content


def test_a_cancelled_stream_is_logged_499(gateway: GatewayProcess, stub: Any) -> None:
    before = wait_idle(gateway)
    cancel_after_a_few_tokens(stub, "grpc-local-cancel-log")
    wait_idle(gateway, cancelled=before["cancelled"] + 1)
    line = log_line(gateway, "grpc-local-cancel-log")
    assert (line["status"], line["error_code"]) == (499, "client_disconnected"), line
    assert line["completion_tokens"] > 0  # what it was sent before it left is counted


def test_a_unary_call_given_up_on_frees_the_engine(gateway: GatewayProcess, stub: Any) -> None:
    before = wait_idle(gateway)
    future = stub.CreateChatCompletion.future(request(**LONG), metadata=meta("grpc-local-gave-up"), timeout=120)
    wait_until(lambda: gateway.ready_stats(MODEL)["tokens_generated"] > before["tokens_generated"], timeout=30,
               what="the engine writing the answer")
    future.cancel()
    after = wait_idle(gateway, cancelled=before["cancelled"] + 1)
    assert after["tokens_generated"] - before["tokens_generated"] < 200
    line = log_line(gateway, "grpc-local-gave-up")
    assert (line["status"], line["error_code"], line["stream"]) == (499, "client_disconnected", False), line


def test_the_local_model_refusals_are_grpc_status_codes(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as too_long:  # prompt + max_tokens past the model's 2048-token context
        stub.CreateChatCompletion(request(max_tokens=4000), metadata=NO_STORE, timeout=30)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = json.loads(dict(too_long.value.trailing_metadata())["x-openai-error"])["error"]
    assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
