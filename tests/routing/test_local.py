"""A route that mixes a (simulated) vLLM server with the real local llama.cpp model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.routing_env import Sims, sims, start_gateway  # noqa: F401
from tests.sim import Fault, canonical_reply, words

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

# Gemma's chat turns as the card's template renders them (its <bos> comes from the tokenizer here).
GEMMA_TURNS = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"


def test_vllm_stream_broken_midway_is_continued_by_the_local_model(sims: Sims) -> None:
    sims.reset()
    config = {
        "server": {"watch_config": False},
        "models": [{"card": "gemma-3-270m", "n_ctx": 1024}],
        "providers": {"gpu": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "gpu-a", "provider": "gpu", "model": "vllm-model"},
                        {"name": "cpu", "provider": "local", "model": "gemma-3-270m"}],
        "routes": [{"name": "hybrid", "deployments": ["gpu-a", "cpu"],
                    "timeouts": {"connect_s": 1, "read_s": 5, "total_s": 60}},
                   {"name": "cpu-only", "deployments": ["cpu"]}],
        "health_checks": {"interval_s": 0.5},
    }
    msgs = [{"role": "user", "content": "Tell me a story"}]
    sims.a.add_fault(Fault.cut_stream(after_chunks=3))  # the role chunk and two words
    with start_gateway(sims, config, require_ready=True) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0, timeout=60)
        chunks = list(client.chat.completions.create(model="hybrid", messages=msgs, stream=True, max_tokens=12,
                                                     temperature=0, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        partial = "".join(words(canonical_reply(msgs))[:2])
        assert text.startswith(partial) and len(text) > len(partial), text
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes in (["length"], ["stop"])
        assert len({c.id for c in chunks}) == 1
        ready = gw.ready_stats("gemma-3-270m")
        assert ready["completed"] >= 1, "the local model produced the rest"

        # What the local model says (greedy, so deterministic) to the rendered prompt, without and with the
        # partial answer appended; the continuation had the 12 tokens less the 2 the broken stream sent.
        def local(prompt: str) -> tuple[str, str | None]:
            r = client.completions.create(model="cpu-only", prompt=prompt, max_tokens=10, temperature=0)
            return r.choices[0].text, r.choices[0].finish_reason

        prompt = GEMMA_TURNS.format(msgs[0]["content"])
        fresh = client.chat.completions.create(model="cpu-only", messages=msgs, max_tokens=10, temperature=0)
        assert (fresh.choices[0].message.content, fresh.choices[0].finish_reason) == local(prompt), \
            "the prompt above is what the chat template renders"
        without, _ = local(prompt)
        with_partial, finish = local(prompt + partial)
        assert with_partial != without, "the partial answer must change what the model says, or this proves nothing"
        assert text == partial + with_partial, (text, partial, with_partial, without)
        assert finishes == [finish]
    sims.reset()


def test_a_loaded_local_model_is_usable_before_the_next_health_round(sims: Sims) -> None:
    """The first health round runs while the model loads; /ready and /v1/models must not wait a whole
    interval (60 s here) to call the loaded model usable."""
    sims.reset()
    config = {
        "server": {"watch_config": False},
        "models": [{"card": "gemma-3-270m", "n_ctx": 1024}],
        "deployments": [{"name": "cpu", "provider": "local", "model": "gemma-3-270m"}],
        "routes": [{"name": "local-only", "deployments": ["cpu"]}],
        "health_checks": {"interval_s": 60},
    }
    with start_gateway(sims, config, require_ready=True) as gw:
        deadline = time.monotonic() + 10  # the re-check follows the load at once; 10 s is far below 60
        while time.monotonic() < deadline:
            ready = httpx.get(f"{gw.root_url}/ready", timeout=5).json()
            if ready["routes"]["local-only"]["usable_deployments"] == 1:
                break
            time.sleep(0.1)
        assert ready["routes"]["local-only"] == {"usable_deployments": 1, "deployments": 1}, ready
        models = {m["id"]: m for m in httpx.get(f"{gw.base_url}/models", timeout=5).json()["data"]}
        assert models["local-only"]["ready"] is True, models["local-only"]
