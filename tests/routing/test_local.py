"""A route that mixes a (simulated) vLLM server with the real local llama.cpp model."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.routing_env import Sims, sims, start_gateway  # noqa: F401
from tests.sim import Fault, canonical_reply, words

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here


def test_vllm_stream_broken_midway_is_continued_by_the_local_model(sims: Sims) -> None:
    sims.reset()
    config = {
        "server": {"watch_config": False},
        "models": [{"card": "gemma-3-270m", "n_ctx": 1024}],
        "providers": {"gpu": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "gpu-a", "provider": "gpu", "model": "vllm-model"},
                        {"name": "cpu", "provider": "local", "model": "gemma-3-270m"}],
        "routes": [{"name": "hybrid", "deployments": ["gpu-a", "cpu"],
                    "timeouts": {"connect_s": 1, "read_s": 5, "total_s": 60}}],
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
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
            ["length"], ["stop"])
        assert len({c.id for c in chunks}) == 1
        ready = gw.ready_stats("gemma-3-270m")
        assert ready["completed"] >= 1, "the local model produced the rest"
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
