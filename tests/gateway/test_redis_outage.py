"""Redis dies under load: no client sees an error, /ready stays 200 (degraded), and the cache comes back."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.redis_env import ThrowawayRedis, unique_prefix
from tests.routing_env import Sims, sims, start_gateway  # noqa: F401

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Outage"}]


def test_redis_stopped_during_load_then_restarted(sims: Sims) -> None:
    sims.reset()
    redis = ThrowawayRedis().start()
    config = {
        "redis": {"url": redis.url, "prefix": unique_prefix(), "timeout_s": 0.2},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{sims.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [{"name": "chat", "deployments": ["a"], "rate_limit": {"rpm": 100000, "tpm": 100000000}}],
        "health_checks": {"interval_s": 5},
    }
    try:
        with start_gateway(sims, config, require_ready=True) as gw:
            async def load() -> list[int]:
                statuses: list[int] = []
                sem = asyncio.Semaphore(10)
                async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:
                    async def one(i: int) -> None:
                        async with sem:
                            r = await client.post("/chat/completions", json={
                                "model": "chat", "temperature": 0,
                                "messages": [{"role": "user", "content": f"Outage {i % 40}"}]})
                            statuses.append(r.status_code)
                            await asyncio.sleep(0.08)  # pace the load so that it spans the outage

                    async def until(n: int) -> None:
                        deadline = time.monotonic() + 20
                        while len(statuses) < n and time.monotonic() < deadline:
                            await asyncio.sleep(0.01)

                    tasks = [asyncio.create_task(one(i)) for i in range(300)]
                    await until(30)  # Redis dies mid-load ...
                    redis.stop()
                    done_at_stop = len(statuses)
                    await until(done_at_stop + 50)  # ... stays dead for 50 answers ...
                    redis.start()  # ... and comes back while the load goes on
                    done_at_start = len(statuses)
                    await asyncio.gather(*tasks)
                assert done_at_stop < done_at_start - 40 and done_at_start < 300, (done_at_stop, done_at_start)
                return statuses

            statuses = asyncio.run(load())
            assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}
            ready = httpx.get(f"{gw.root_url}/ready")
            assert ready.status_code == 200
            assert ready.json()["redis"]["errors"] > 0, "the outage was noticed and counted"
            # Redis is back: the cache works again.
            deadline = time.monotonic() + 10
            body = {"model": "chat", "temperature": 0, "messages": MSGS}
            while time.monotonic() < deadline:
                httpx.post(f"{gw.base_url}/chat/completions", json=body)
                if httpx.post(f"{gw.base_url}/chat/completions", json=body).headers["x-gateway-cache"] == "hit":
                    break
                time.sleep(0.2)
            else:
                raise AssertionError("the cache did not come back after Redis did")
    finally:
        redis.stop()
        sims.reset()
