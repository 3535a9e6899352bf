"""Routing under load: the weighted split, hot reloads, and a primary that dies and comes back."""

from __future__ import annotations

import asyncio
import collections
import threading

import httpx
import pytest
import yaml

from tests.routing_env import Sims, admin, base_config, gw, sims, with_changes  # noqa: F401
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "user", "content": "Load test"}]
EXPECTED = canonical_reply(MSGS)


async def _fire(base_url: str, n: int, concurrency: int, model: str, stream_every: int = 0,
                during=None) -> tuple[collections.Counter, list[str]]:
    """Send n requests; return deployments that served them and every failure seen by a client."""
    served: collections.Counter = collections.Counter()
    failures: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(i: int) -> None:
            stream = bool(stream_every) and i % stream_every == 0
            body = {"model": model, "messages": MSGS, "stream": stream}
            async with sem:
                try:
                    r = await client.post("/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{i}: {exc!r}")
                    return
                if r.status_code != 200:
                    failures.append(f"{i}: HTTP {r.status_code} {r.text[:200]}")
                    return
                if stream:
                    text, problem = _sse_text(r.text)
                    if problem or text != EXPECTED:
                        failures.append(f"{i}: stream {problem or 'text'}: {text!r}")
                        return
                elif r.json()["choices"][0]["message"]["content"] != EXPECTED:
                    failures.append(f"{i}: wrong content")
                    return
                served[r.headers["x-gateway-deployment"]] += 1

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        if during is not None:
            await during()
        await asyncio.gather(*tasks)
    return served, failures


def _sse_text(raw: str) -> tuple[str, str | None]:
    import json

    text = []
    for block in raw.split("\n\n"):
        if not block.startswith("data: "):
            continue
        data = block[6:]
        if data == "[DONE]":
            return "".join(text), None
        chunk = json.loads(data)
        if "error" in chunk:
            return "".join(text), "in-band error"
        for c in chunk.get("choices") or []:
            text.append(c["delta"].get("content") or "")
    return "".join(text), "no [DONE]"


def version(g: GatewayProcess) -> int:
    return admin(g, "GET", "/config").json()["version"]


def test_weighted_split_over_1000_requests(gw: GatewayProcess) -> None:
    served, failures = asyncio.run(_fire(gw.base_url, 1000, 20, "weighted"))
    assert not failures
    # Weights 3:1, so 750 expected on a-heavy. Tolerance ±60 is about 4.4 standard deviations
    # of a binomial(1000, 0.75) (sd 13.7): a correct router fails this about once in 100,000 runs.
    assert abs(served["a-heavy"] - 750) <= 60, served
    assert served["a-heavy"] + served["b-light"] == 1000


def test_primary_killed_and_restarted_under_load_loses_nothing(gw: GatewayProcess, sims: Sims) -> None:
    sims.a.set_fault(Fault.chunk_delay(0.01))  # streams on a are in flight when it dies
    sims.b.set_fault(Fault.chunk_delay(0.01))

    async def chaos() -> None:
        await asyncio.sleep(0.8)
        sims.a.stop()  # a crash: open connections reset, new ones refused
        await asyncio.sleep(1.5)
        sims.a.set_fault(Fault.chunk_delay(0.01))
        sims.a.start()

    served, failures = asyncio.run(_fire(gw.base_url, 500, 20, "chat-default", stream_every=5, during=chaos))
    assert failures == [], failures[:5]
    assert sum(served.values()) == 500
    assert served["b"] > 0 and served["a"] > 0, served


def test_hot_reload_under_load_and_an_invalid_edit(gw: GatewayProcess, sims: Sims) -> None:
    config = base_config(sims)
    swapped = with_changes(config, **{"chat-default": {"deployments": ["b", "a"]}})
    results: dict = {}

    def load() -> None:
        results["out"] = asyncio.run(_fire(gw.base_url, 400, 10, "chat-default"))

    t = threading.Thread(target=load)
    t.start()
    # Edit the file three times while requests flow, each edit once the watcher has applied the one before (two
    # edits within one of its rounds, which a busy machine can make late, would count as one reload).
    for expected, cfg in enumerate((swapped, config, swapped), start=2):
        wait_until(lambda: any(results) or sims.a.count("/v1/chat/completions") + sims.b.count("/v1/chat/completions")
                   >= 20 * (expected - 1), timeout=30, interval=0.02, what="requests flowing")
        gw.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        wait_until(lambda: version(gw) >= expected, timeout=30, interval=0.05, what=f"reload to version {expected}")
    t.join(60)
    served, failures = results["out"]
    assert failures == [], failures[:5]
    assert version(gw) == 4
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS})
    assert r.headers["x-gateway-deployment"] == "b", "the new order serves"

    # An invalid edit is refused with a line number; the old config keeps serving.
    text = yaml.safe_dump(swapped, sort_keys=False).replace("strategy: weighted", "strategy: fastest")
    gw.config_path.write_text(text)
    bad_line = next(i for i, line in enumerate(text.splitlines(), 1) if "strategy: fastest" in line)
    wait_until(lambda: not admin(gw, "GET", "/config").json()["last_reload"]["ok"], timeout=30, interval=0.1,
               what="the invalid edit being refused")
    last = admin(gw, "GET", "/config").json()
    assert last["last_reload"]["ok"] is False and last["version"] == 4
    assert any(f":{bad_line}: routes[2].strategy" in p for p in last["last_reload"]["problems"]), last
    r = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "chat-default", "messages": MSGS})
    assert r.status_code == 200 and r.headers["x-gateway-deployment"] == "b"
    forced = admin(gw, "POST", "/reload")
    assert forced.status_code == 400 and f":{bad_line}:" in forced.text
