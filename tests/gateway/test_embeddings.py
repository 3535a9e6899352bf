"""`POST /v1/embeddings` end to end: the official SDK against a real gateway on loopback, with the real local
embedding model (all-MiniLM-L6-v2, converted to GGUF at first use) and simulated vLLM upstreams.

One gateway for the module (the models load once): keys on, Redis for budgets and the cache, and a chat
model beside the embedding one, which must serve on while the embedding engine process is killed (last).
"""

from __future__ import annotations

import base64
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest

from backends.llamacpp.embed_engine import STALL_ENV
from backends.llamacpp.host import HOLD_ENV
from tests.conftest import MODEL
from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.sim.faults import Fault
from tests.sim.openai_sim import sim_vector

pytestmark = pytest.mark.process  # a gateway process, with its engine processes

MASTER = "sk-master-embeddings-000"
LOCAL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file is missing, a starting engine process waits before it loads (HOLD_ENV)."""
    path = tmp_path_factory.mktemp("hold") / "go"
    path.touch()
    return path


@pytest.fixture(scope="module")
def stall(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """While this file exists, the embedding engine holds the job it took before it decodes (STALL_ENV)."""
    return tmp_path_factory.mktemp("stall") / "stall"


@pytest.fixture(scope="module")
def gw(sims: Sims, gate: Path, stall: Path) -> Iterator[GatewayProcess]:
    sims.reset()
    cfg = {
        "redis": {"url": require_redis(), "prefix": unique_prefix()},
        "usage": {"flush_interval_s": 0.1},
        "models": [{"card": LOCAL}, {"card": MODEL, "n_ctx": 512, "parallel": 1}],
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"},
                      "vllm-b": {"kind": "vllm", "base_url": f"{sims.b.url}/v1"}},
        "deployments": [
            {"name": "ea", "provider": "vllm-a", "model": "vllm-model", "cost_per_mtok": 1e6},  # $1 a token
            {"name": "eb", "provider": "vllm-b", "model": "vllm-model", "cost_per_mtok": 1e6},
        ],
        "routes": [{"name": "sim-embed", "deployments": ["ea", "eb"], "retry": {"backoff_base_s": 0.01}}],
        "health_checks": {"interval_s": 30},
    }
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER, HOLD_ENV: str(gate), STALL_ENV: str(stall)}) as g:
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


def test_many_inputs_fit_when_each_fits(client: openai.OpenAI) -> None:
    """5 inputs of ~130 tokens: together past the model's 512-token context, each within it (each is embedded
    on its own), so routing must not refuse them as one long prompt."""
    sentence = " ".join(["The quick brown fox jumps over the lazy dog near the river bank."] * 10)
    r = client.embeddings.create(model=LOCAL, input=[sentence] * 5)
    assert len(r.data) == 5 and 512 < r.usage.prompt_tokens < 5 * 512


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


# -- the engine process: batching across requests, and its death (last: the gateway and chat serve on) -------

ADMIN = {"Authorization": f"Bearer {MASTER}"}
NO_CACHE = {**ADMIN, "Cache-Control": "no-store"}


def _ready(gw: GatewayProcess) -> dict[str, Any]:
    return httpx.get(f"{gw.root_url}/ready", headers=ADMIN, timeout=5).json()


def _embedder(gw: GatewayProcess) -> dict[str, Any]:
    return _ready(gw)["backends"][LOCAL]


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.02)


def _post(gw: GatewayProcess, inputs: Any, out: dict[str, Any], key: str) -> threading.Thread:
    def run() -> None:
        out[key] = httpx.post(f"{gw.base_url}/embeddings", headers=NO_CACHE, timeout=60,
                              json={"model": LOCAL, "input": inputs, "encoding_format": "float"})
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_concurrent_requests_share_one_decode(gw: GatewayProcess, stall: Path) -> None:
    """The engine holds its first job (STALL_ENV) until the second is queued behind it: both are then
    embedded in one llama_decode, into the vectors each gets alone."""
    a, b = ["Rivers run to the sea.", "The sea is salty."], "Mountains are tall."
    alone = {k: httpx.post(f"{gw.base_url}/embeddings", headers=NO_CACHE, timeout=30,
                           json={"model": LOCAL, "input": v, "encoding_format": "float"}).json()
             for k, v in (("a", a), ("b", b))}
    before = _embedder(gw)["stats"]
    stall.touch()
    out: dict[str, Any] = {}
    try:
        first = _post(gw, a, out, "a")
        _wait(lambda: _embedder(gw)["stats"]["queue_depth"] == 1, 10, "the first request taken")
        second = _post(gw, b, out, "b")
        _wait(lambda: _embedder(gw)["stats"]["queue_depth"] == 2, 10, "the second request queued")
    finally:
        stall.unlink()
    first.join(30), second.join(30)
    assert out["a"].status_code == out["b"].status_code == 200, (out["a"].text, out["b"].text)
    after = _embedder(gw)["stats"]
    assert after["decodes"] - before["decodes"] == 1, (before, after)
    assert after["shared_decodes"] - before["shared_decodes"] == 1 and after["inputs"] - before["inputs"] == 3
    for k in ("a", "b"):
        got, solo = out[k].json(), alone[k]
        assert got["usage"] == solo["usage"]
        # (another batch shape sums in another order: the same vectors to ~1e-5, as in the first test)
        assert np.allclose([d["embedding"] for d in got["data"]], [d["embedding"] for d in solo["data"]], atol=1e-4)


def test_a_killed_embedding_engine_costs_its_requests_not_the_gateway(gw: GatewayProcess, gate: Path, stall: Path,
                                                                      client: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "Stocks fell sharply today."]
    embed = {"model": LOCAL, "input": texts, "encoding_format": "float"}
    before = httpx.post(f"{gw.base_url}/embeddings", headers=NO_CACHE, json=embed, timeout=30).json()["data"]
    e = _embedder(gw)
    assert e["state"] == "ready" and e["stats"]["decodes"] >= 1, e
    pid, restarts = e["engines"][0]["pid"], e["restarts"]
    assert gw.proc is not None and pid != gw.proc.pid  # an engine process of its own

    # Killed with a request in it: that request is a retryable 503 at once, not a hang or a 500.
    gate.unlink()  # the restarted engine waits before it loads: the gateway stays `restarting` meanwhile
    stall.touch()
    out: dict[str, Any] = {}
    try:
        request = _post(gw, f"in the engine {time.time()}", out, "r")
        _wait(lambda: _embedder(gw)["stats"]["queue_depth"] == 1, 10, "the request in the engine")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        request.join(30)
        r = out["r"]
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable", r.text
        assert int(r.headers["retry-after"]) >= 1 and time.monotonic() - killed_at < 5
        _wait(lambda: _embedder(gw)["state"] == "restarting", 5, "restarting")
        e = _embedder(gw)
        assert (e["restarts"], e["last_exit"]) == (restarts + 1, "SIGKILL"), e
        # Meanwhile: the gateway answers, embeddings say not ready at once, chat and upstream routes serve on.
        with pytest.raises(openai.InternalServerError) as err:
            client.embeddings.create(model=LOCAL, input=f"while restarting {time.time()}")
        assert err.value.status_code == 503 and err.value.code == "model_not_ready"
        chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert chat.choices[0].finish_reason in ("stop", "length")
        assert client.embeddings.create(model="sim-embed", input=f"upstream {time.time()}").data
        assert _ready(gw)["backends"][MODEL]["state"] == "ready"
    finally:
        stall.unlink(missing_ok=True)
        gate.touch()
    _wait(lambda: _embedder(gw)["state"] == "ready", 30, "ready again")
    e = _embedder(gw)
    assert e["engines"][0]["pid"] not in (pid, None) and e["restarts"] == restarts + 1
    assert gw.proc.poll() is None  # the gateway process never went down
    after = httpx.post(f"{gw.base_url}/embeddings", headers=NO_CACHE, json=embed, timeout=30).json()["data"]
    assert [d["embedding"] for d in after] == [d["embedding"] for d in before]  # the same model, the same vectors
    metrics = httpx.get(f"{gw.root_url}/metrics", headers=ADMIN, timeout=5).text.splitlines()
    assert f'llm_gateway_engine_restarts_total{{model="{LOCAL}",reason="SIGKILL"}} {restarts + 1:.1f}' in metrics
