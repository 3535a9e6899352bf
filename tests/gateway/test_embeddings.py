"""`POST /v1/embeddings` end to end: the official SDK against a real gateway on loopback, with the real local
embedding model (all-MiniLM-L6-v2, converted to GGUF at first use) and simulated vLLM upstreams.

One gateway for the module (the model loads once): keys on, Redis for budgets and the cache.
"""

from __future__ import annotations

import base64
import math
import time
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.sim.faults import Fault
from tests.sim.openai_sim import sim_vector

pytestmark = pytest.mark.process  # a gateway process, with a model loaded in it

MASTER = "sk-master-embeddings-000"
LOCAL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def gw(sims: Sims) -> Iterator[GatewayProcess]:
    sims.reset()
    cfg = {
        "redis": {"url": require_redis(), "prefix": unique_prefix()},
        "usage": {"flush_interval_s": 0.1},
        "models": [{"card": LOCAL}],
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{sims.b.url}/v1"}},
        "deployments": [
            {"name": "ea", "provider": "vllm-a", "model": "vllm-model", "cost_per_mtok": 1e6},  # $1 a token
            {"name": "eb", "provider": "vllm-b", "model": "vllm-model", "cost_per_mtok": 1e6},
        ],
        "routes": [{"name": "sim-embed", "deployments": ["ea", "eb"], "retry": {"backoff_base_s": 0.01}}],
        "health_checks": {"interval_s": 30},
    }
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        yield g
    sims.reset()


@pytest.fixture
def client(gw: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=MASTER, max_retries=0, timeout=30)


def _cos(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_a_string_a_list_and_token_arrays_get_unit_vectors_that_conform(gw: GatewayProcess, client: openai.OpenAI,
                                                                        conforms: Any) -> None:
    one = client.embeddings.create(model=LOCAL, input="The cat sits on the mat.", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    assert math.isclose(float(np.linalg.norm(one.data[0].embedding)), 1.0, rel_tol=1e-4)
    assert one.usage.prompt_tokens == one.usage.total_tokens > 2  # [CLS] ... [SEP]

    many = client.embeddings.create(model=LOCAL, input=["The cat sits on the mat.", "Stocks fell sharply today."],
                                    encoding_format="float")
    assert [d.index for d in many.data] == [0, 1]
    assert np.allclose(many.data[0].embedding, one.data[0].embedding, atol=1e-3)  # batching changes nothing

    raw = httpx.post(f"{gw.base_url}/embeddings", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                     json={"model": LOCAL, "input": [[101, 7592, 2088, 102], [101, 7592, 102]]})
    assert raw.status_code == 200, raw.text
    conforms("CreateEmbeddingResponse", raw.json())
    flat = client.embeddings.create(model=LOCAL, input=[101, 7592, 2088, 102], encoding_format="float")
    text = client.embeddings.create(model=LOCAL, input="hello world", encoding_format="float")
    assert np.allclose(flat.data[0].embedding, raw.json()["data"][0]["embedding"], atol=1e-5)
    assert np.allclose(flat.data[0].embedding, text.data[0].embedding, atol=1e-4)  # the same tokens
    assert flat.usage.prompt_tokens == 4


def test_base64_decodes_to_the_float_vector(gw: GatewayProcess, client: openai.OpenAI) -> None:
    sentence = "Base64 carries little-endian float32."
    floats = client.embeddings.create(model=LOCAL, input=sentence, encoding_format="float").data[0].embedding
    r = httpx.post(f"{gw.base_url}/embeddings", headers={"Authorization": f"Bearer {MASTER}"}, timeout=30,
                   json={"model": LOCAL, "input": sentence, "encoding_format": "base64"})
    encoded = r.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    assert np.allclose(np.frombuffer(base64.b64decode(encoded), dtype="<f4"), floats, atol=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    assert np.allclose(client.embeddings.create(model=LOCAL, input=sentence).data[0].embedding, floats, atol=1e-6)


def test_similar_sentences_are_closer_than_unrelated_ones(client: openai.OpenAI) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "Interest rates were raised by the central bank."]
    v = [d.embedding for d in client.embeddings.create(model=LOCAL, input=texts, encoding_format="float").data]
    close = _cos(v[0], v[1])
    assert close > 0.6, close
    assert close > _cos(v[0], v[2]) + 0.3 and close > _cos(v[0], v[3]) + 0.3


def test_client_mistakes_are_400s_naming_the_field(gw: GatewayProcess, client: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"input": ""}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": ["fine", ""]}, "input[1]", "invalid_value"),
        ({"input": ["x"] * 2049}, "input", "invalid_value"),
        ({"input": [101, 99999999]}, "input", "invalid_value"),  # past the vocabulary
        ({"input": "word " * 600}, "input", "context_length_exceeded"),  # past 512 tokens
        ({"input": "x", "dimensions": 128}, "dimensions", "unsupported_parameter"),  # not a Matryoshka model
        ({"input": "x", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
    ]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model=LOCAL, **extra)
        body = err.value.body
        assert isinstance(body, dict), extra
        assert (body.get("param"), body.get("code")) == (param, code), (extra, body)
    assert client.embeddings.create(model=LOCAL, input="x", dimensions=384).data  # its own size is fine


def test_a_chat_model_asked_for_embeddings_is_a_400(gw: GatewayProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=LOCAL, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "unsupported_model"


def test_a_repeat_is_a_cache_hit(gw: GatewayProcess) -> None:
    body = {"model": LOCAL, "input": f"cached {time.time()}"}
    headers = {"Authorization": f"Bearer {MASTER}"}
    first = httpx.post(f"{gw.base_url}/embeddings", headers=headers, json=body, timeout=30)
    again = httpx.post(f"{gw.base_url}/embeddings", headers=headers, json=body, timeout=30)
    assert first.headers["x-gateway-cache"] == "miss" and again.headers["x-gateway-cache"] == "hit"
    assert again.json() == first.json()
    other = httpx.post(f"{gw.base_url}/embeddings", headers=headers, json={**body, "encoding_format": "base64"})
    assert other.headers["x-gateway-cache"] == "miss"  # another encoding is another answer


def test_upstream_dimensions_pass_through_and_a_5xx_fails_over(gw: GatewayProcess, sims: Sims,
                                                                client: openai.OpenAI) -> None:
    sims.a.clear(), sims.b.clear()
    sims.a.add_fault(Fault.status(503))
    text = f"fail over {time.time()}"
    r = client.embeddings.with_raw_response.create(model="sim-embed", input=text, dimensions=16,
                                                   encoding_format="float")
    assert r.headers["x-gateway-deployment"] == "eb" and r.headers["x-gateway-attempts"] == "2"
    out = r.parse()
    assert np.allclose(out.data[0].embedding, sim_vector(text, sims.b.embedding_dimensions, 16))
    sent = [q for q in sims.b.requests if q.path == "/v1/embeddings"][-1].body
    assert sent["dimensions"] == 16 and sent["input"] == text and "stream" not in sent
    assert sims.a.count("/v1/embeddings") == 1


def test_embedding_tokens_count_toward_a_keys_usage_and_budget(gw: GatewayProcess, sims: Sims) -> None:
    admin = {"Authorization": f"Bearer {MASTER}"}
    key = httpx.post(f"{gw.root_url}/admin/keys", headers=admin, timeout=10,
                     json={"alias": "embedder", "budget_usd": 6, "budget_period": "total"}).json()
    c = openai.OpenAI(base_url=gw.base_url, api_key=key["key"], max_retries=0, timeout=30)
    five = f"five words {time.time()} here now"
    assert c.embeddings.create(model="sim-embed", input=five).usage.prompt_tokens == 5  # $5 of a $6 budget
    c.embeddings.create(model="sim-embed", input=f"two {time.time()}")  # still under: $7 spent
    with pytest.raises(openai.RateLimitError) as err:
        c.embeddings.create(model="sim-embed", input=f"over {time.time()}")
    assert err.value.body["code"] == "insufficient_quota"
    deadline = time.monotonic() + 5
    while True:
        totals = httpx.get(f"{gw.root_url}/admin/usage", headers=admin, params={"key_id": key["id"]}).json()["totals"]
        if totals["requests"] >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert (totals["requests"], totals["prompt_tokens"], totals["completion_tokens"]) == (2, 7, 0), totals
    assert totals["cost_usd"] == pytest.approx(7.0)


def test_models_lists_the_embedding_model_with_its_facts(gw: GatewayProcess) -> None:
    r = httpx.get(f"{gw.base_url}/models/{LOCAL}", headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200
    assert r.json()["capabilities"] == ["embeddings"] and r.json()["dimensions"] == 384
