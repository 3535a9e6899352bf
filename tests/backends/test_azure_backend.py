"""The Azure OpenAI backend against the Azure simulator, over real sockets: its URLs (classic with api-version,
and v1), its `api-key`, extra headers, the stream without Azure's prompt-annotation event, and Azure's errors
in OpenAI's words (content_filter, a status-only code, a deployment or an api-version that does not exist)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

import orjson
import pytest

from backends.azure import DEFAULT_API_VERSION, AzureOpenAIBackend
from backends.base import CallContext
from backends.contract.errors import UpstreamError
from backends.contract.protocol import ChatCompletionRequest, EmbeddingRequest
from backends.http import PoolSettings, UpstreamPool
from tests.sim import AzureSim, Fault, canonical_reply
from tests.sim.azure_sim import API_VERSIONS, FILTER_WORD

KEY = "azure-test-key-0123456789"
MSGS = [{"role": "user", "content": "Hello Azure"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[AzureSim]:
    with AzureSim(api_key=KEY) as s:
        yield s


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    p = UpstreamPool(PoolSettings())
    yield p
    await p.aclose()


def backend(sim: AzureSim, pool: UpstreamPool, model: str = "gpt-4o", **kw: Any) -> AzureOpenAIBackend:
    kw.setdefault("api_key", KEY)
    return AzureOpenAIBackend("az", None, base_url=sim.url + "/", model=model, pool=pool, **kw)


def chat(stream: bool = False, content: str = "Hello Azure", **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "route", "stream": stream, "messages": [
        {"role": "user", "content": content}], **extra})


def last(sim: AzureSim) -> Any:
    return sim.requests[-1]


async def test_classic_chat_url_key_and_headers(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    b = backend(sim, pool, headers={"OpenAI-Organization": "org-test", "X-Trace-Tag": "blue"})
    out = orjson.loads(await b.chat(chat(top_k=5), CallContext()))  # top_k: not OpenAI's, dropped (Azure: 400)
    assert out["choices"][0]["message"]["content"] == canonical_reply(MSGS)
    sent = last(sim)
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.headers["openai-organization"] == "org-test" and sent.headers["x-trace-tag"] == "blue"
    assert sent.body["model"] == "gpt-4o" and "top_k" not in sent.body
    assert DEFAULT_API_VERSION in API_VERSIONS
    assert sim.requests[-1].headers.get("content-type") == "application/json"


async def test_the_api_version_is_sent_and_v1_sends_none(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    await backend(sim, pool, api_version="2024-06-01").chat(chat(), CallContext())
    await backend(sim, pool, api_version="v1").chat(chat(), CallContext())
    classic, v1 = sim.requests[-2:]
    assert classic.path == "/openai/deployments/gpt-4o/chat/completions"
    assert v1.path == "/openai/v1/chat/completions" and v1.body["model"] == "gpt-4o"
    with pytest.raises(UpstreamError) as err:
        await backend(sim, pool, api_version="2019-01-01").chat(chat(), CallContext())
    assert err.value.status_code == 400 and "API version not supported" in err.value.message


async def test_a_stream_without_azure_s_prompt_annotation(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    frames = b"".join([c async for c in await backend(sim, pool).chat_stream(
        chat(stream=True, stream_options={"include_usage": True}), CallContext())])
    events = [e for e in frames.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert all("prompt_filter_results" not in c for c in chunks)
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        canonical_reply(MSGS)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    # ... which the simulator did send, first.
    assert AzureSim().stream_prologue()[0].data.startswith(b'data: {"choices":[]')


async def test_embeddings(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    req = EmbeddingRequest.model_validate({"model": "route", "input": ["a", "b"]})
    out = orjson.loads(await backend(sim, pool, model="embed").embeddings(req, CallContext()))
    assert len(out["data"]) == 2 and last(sim).path == "/openai/deployments/embed/embeddings"


async def test_azure_errors_in_openai_s_words(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    b = backend(sim, pool, headers={"X-Custom-Auth": "hdr-secret-value-42"})
    with pytest.raises(UpstreamError) as err:
        await b.chat(chat(content=f"tell me about {FILTER_WORD}"), CallContext())
    e = err.value
    assert (e.status_code, e.code, e.param, e.error_type) == (400, "content_filter", "prompt", "invalid_request_error")
    assert not e.retryable  # the prompt's fault: no other deployment is asked
    sim.rpm["gpt-4o"] = 0
    with pytest.raises(UpstreamError) as err:
        await b.chat(chat(), CallContext())
    assert (err.value.status_code, err.value.code) == (429, "rate_limit_exceeded")  # Azure says "429"
    assert err.value.retryable and err.value.retry_after == 60
    sim.rpm.clear()
    with pytest.raises(UpstreamError) as err:
        await backend(sim, pool, model="nope").chat(chat(), CallContext())
    assert (err.value.status_code, err.value.code) == (404, "DeploymentNotFound")
    with pytest.raises(UpstreamError) as err:
        await backend(sim, pool, api_key="wrong").chat(chat(), CallContext())
    assert (err.value.status_code, err.value.code) == (502, "upstream_auth_failed") and err.value.retryable


async def test_an_upstream_that_quotes_a_header_value_has_it_scrubbed(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    secret = "hdr-secret-value-42"
    sim.add_fault(Fault.status(500, message=f"bad header X-Custom-Auth: {secret}"))
    with pytest.raises(UpstreamError) as err:
        await backend(sim, pool, headers={"X-Custom-Auth": secret}).chat(chat(), CallContext())
    assert secret not in err.value.message and "***" in err.value.message
    assert secret not in repr(backend(sim, pool, headers={"X-Custom-Auth": secret}))


async def test_entra_id_token_through_headers_instead_of_a_key(sim: AzureSim, pool: UpstreamPool) -> None:
    sim.reset()
    sim.bearer_token = "entra-token"
    await backend(sim, pool, api_key=None, headers={"Authorization": "Bearer entra-token"}).chat(chat(), CallContext())
    assert "api-key" not in last(sim).headers
