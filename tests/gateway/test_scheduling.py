"""Priorities and fair sharing through real gateway processes, driven by the official `openai` SDK, in front
of a slow simulated vLLM (every chunk after the first 0.25 s apart): a tenant with eight streams does not
make another tenant's one wait for its queue; batch requests hold at most their share while an interactive
one gets through at once; the class comes from the header, capped by the key; a key's
max_concurrent_requests holds across two replicas sharing Redis, and a route's too."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import httpx
import openai
import pytest

from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import Sims, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess
from tests.sim import Fault
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.process

MASTER = "sk-master-scheduling-0123456789"
DELAY_S = 0.25
HEADER = "x-gateway-priority"
MESSAGES = [{"role": "user", "content": "Tell me something."}]


def config(s: Sims, prefix: str) -> dict[str, Any]:
    return {
        "redis": {"url": require_redis(), "prefix": prefix},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
        "deployments": [
            {"name": "capped", "provider": "vllm-a", "model": "vllm-model", "max_concurrency": 2, "batch_share": 0.5},
            {"name": "plain", "provider": "vllm-a", "model": "vllm-model"},
        ],
        "routes": [
            {"name": "capped", "deployments": ["capped"], "timeouts": {"queue_s": 30, "total_s": 60}},
            {"name": "chat", "deployments": ["plain"], "timeouts": {"queue_s": 8}},
            {"name": "chat-short", "deployments": ["plain"], "timeouts": {"queue_s": 0.3}},
            {"name": "solo", "deployments": ["plain"], "max_concurrent_requests": 1, "timeouts": {"queue_s": 0.3}},
        ],
        "health_checks": {"interval_s": 5},
        "batches": {"enabled": False},
    }


@pytest.fixture(scope="module")
def replicas(sims: Sims) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:  # noqa: F811
    sims.reset()
    sims.a.set_fault(Fault.chunk_delay(DELAY_S))
    cfg = config(sims, unique_prefix())
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER}
    with GatewayProcess(cfg, env=env) as one, GatewayProcess(cfg, env=env) as two:
        yield one, two
    sims.reset()


def new_key(g: GatewayProcess, **fields: Any) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                   json={"alias": "t", **fields}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def scheduler(g: GatewayProcess, dep: str = "capped") -> dict[str, Any]:
    r = httpx.get(f"{g.root_url}/admin/deployments", headers={"Authorization": f"Bearer {MASTER}"}, timeout=5)
    return r.json()["deployments"][dep]["scheduler"]


def client(g: GatewayProcess, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=60)


async def streamed(c: openai.AsyncOpenAI, model: str, started: float, priority: str | None = None,
                   max_tokens: int = 4, opened: asyncio.Event | None = None) -> tuple[float, float, str]:
    """(seconds to the first chunk, to the last, the class the gateway used), from `started`. `opened` is set
    once the response has begun: the request was admitted, so it holds its places until its last chunk."""
    raw = await c.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, max_tokens=max_tokens,
        extra_headers={HEADER: priority} if priority else None)
    first = time.monotonic() - started
    if opened is not None:
        opened.set()
    async for _ in raw.parse():
        pass
    return first, time.monotonic() - started, raw.headers.get(HEADER, "")


async def until(predicate: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def holding(c: openai.AsyncOpenAI, model: str, started: float, count: int,
                  max_tokens: int) -> list[asyncio.Future]:
    """`count` streams, returned once every one has been admitted and holds its places (the key's, the
    route's): a wait for that state, not for a time a loaded machine may need more than. A stream that
    fails or ends first fails the test."""
    opened = [asyncio.Event() for _ in range(count)]
    streams = [asyncio.ensure_future(streamed(c, model, started, max_tokens=max_tokens, opened=e)) for e in opened]
    await wait_until_async(lambda: all(e.is_set() for e in opened) or any(s.done() for s in streams),
                           what=f"{count} streams admitted")
    for s in streams:
        if s.done():
            s.result()  # its error, if it failed
            raise AssertionError("a held stream ended before the others were admitted")
    return streams


def test_one_tenant_s_queue_does_not_hold_up_another(replicas) -> None:
    g = replicas[0]
    a, b = client(g, new_key(g)), client(g, new_key(g))

    async def go() -> tuple[list[tuple[float, float, str]], tuple[float, float, str], float, float]:
        t0 = time.monotonic()
        mine = [asyncio.ensure_future(streamed(a, "capped", t0)) for _ in range(8)]
        await until(lambda: scheduler(g)["waiting"]["interactive"] == 6, "A: 2 in service, 6 waiting")
        arrived = time.monotonic() - t0
        theirs = await streamed(b, "capped", t0)
        return await asyncio.gather(*mine), theirs, arrived, t0

    mine, theirs, arrived, _ = asyncio.run(go())
    one_stream = min(last - first for first, last, _ in mine)
    b_waited = theirs[0] - arrived
    assert b_waited < one_stream + 1.0, (b_waited, one_stream)  # one slot's end, not three rounds of A's
    after_b = sum(1 for first, _, _ in mine if first > theirs[0])
    assert after_b >= 4, f"only {after_b} of A's requests started after B's"
    assert all(cls == "interactive" for *_, cls in [*mine, theirs])
    snap = scheduler(g)
    assert snap["in_service"]["interactive"] == 0 and snap["waiting"]["interactive"] == 0 and snap["dropped"] == 0


def test_batch_holds_its_share_and_interactive_gets_in_at_once(replicas) -> None:
    g = replicas[0]
    c = client(g, new_key(g))

    async def go() -> tuple[list[tuple[float, float, str]], tuple[float, float, str], float]:
        t0 = time.monotonic()
        lines = [asyncio.ensure_future(streamed(c, "capped", t0, "batch", max_tokens=6)) for _ in range(3)]
        await until(lambda: scheduler(g)["waiting"]["batch"] == 2, "1 batch request in service, 2 waiting")
        snap = scheduler(g)
        assert snap["in_service"] == {"interactive": 0, "near-real-time": 0, "batch": 1}, snap
        asked = time.monotonic() - t0
        user = await streamed(c, "capped", t0, max_tokens=1)
        return await asyncio.gather(*lines), user, asked

    lines, user, asked = asyncio.run(go())
    assert user[0] - asked < 1.0, "the interactive request did not wait for the batch ones"
    assert user[2] == "interactive" and all(cls == "batch" for *_, cls in lines)
    firsts = sorted(first for first, _, _ in lines)
    assert firsts[1] > firsts[0] + DELAY_S * 3, "the second batch request waited for the first one's slot"


def test_the_header_chooses_the_class_within_what_the_key_may_use(replicas) -> None:
    g = replicas[0]
    capped = openai.OpenAI(base_url=g.base_url, api_key=new_key(g, priority="batch"), max_retries=0, timeout=30)
    raw = capped.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, max_tokens=1,
                                                           extra_headers={HEADER: "interactive"})
    assert raw.headers[HEADER] == "batch" and raw.parse().choices[0].message.content
    free = openai.OpenAI(base_url=g.base_url, api_key=new_key(g), max_retries=0, timeout=30)
    raw = free.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, max_tokens=1,
                                                         extra_headers={HEADER: "near-real-time"})
    assert raw.headers[HEADER] == "near-real-time"
    with pytest.raises(openai.BadRequestError) as err:
        free.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=1, extra_headers={HEADER: "asap"})
    assert err.value.body["param"] == HEADER and HEADER in err.value.message  # type: ignore[index]
    # A key may be given a class after the fact, and a bad one is refused with the field named.
    r = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                   json={"alias": "x", "priority": "urgent"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_a_key_s_concurrency_limit_holds_across_replicas(replicas) -> None:
    one, two = replicas
    key = new_key(one, max_concurrent_requests=2)
    first, second = client(one, key), client(two, key)

    async def go() -> tuple[list[tuple[float, float, str]], float, tuple[float, float, str], float]:
        t0 = time.monotonic()
        held = await holding(first, "chat", t0, 2, max_tokens=10)  # both streams running on replica one
        refused_at = time.monotonic()
        with pytest.raises(openai.RateLimitError) as err:
            await second.chat.completions.create(model="chat-short", messages=MESSAGES, max_tokens=1)
        refused_after = time.monotonic() - refused_at
        assert err.value.code == "concurrency_limit_exceeded"
        assert err.value.response.headers["retry-after"] == "1"
        asked = time.monotonic() - t0
        waited = await streamed(second, "chat", t0, max_tokens=1)  # waits for a place instead
        return await asyncio.gather(*held), refused_after, waited, asked

    held, refused_after, waited, asked = asyncio.run(go())
    assert 0.25 <= refused_after < 2.0, refused_after
    assert waited[0] >= min(last for _, last, _ in held) - 0.1, "it started only once a held stream ended"
    assert waited[0] - asked < 8
    # Free again everywhere once they are done.
    quick = openai.OpenAI(base_url=two.base_url, api_key=key, max_retries=0, timeout=30)
    started = time.monotonic()
    quick.chat.completions.create(model="chat-short", messages=MESSAGES, max_tokens=1)
    assert time.monotonic() - started < 2.0


def test_a_route_s_concurrency_limit_holds_across_replicas(replicas) -> None:
    one, two = replicas
    a, b = client(one, new_key(one)), client(two, new_key(two))

    async def go() -> None:
        t0 = time.monotonic()
        (running,) = await holding(a, "solo", t0, 1, max_tokens=10)
        with pytest.raises(openai.RateLimitError) as err:
            await b.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=1)
        assert err.value.code == "concurrency_limit_exceeded" and "this model" in err.value.message
        await running
        await b.chat.completions.create(model="solo", messages=MESSAGES, max_tokens=1)

    asyncio.run(go())
    wait_until(lambda: "concurrency_limit_exceeded" in httpx.get(
        f"{one.root_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"}, timeout=5).text
        or "concurrency_limit_exceeded" in httpx.get(
        f"{two.root_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"}, timeout=5).text,
        timeout=5, what="the refusal counted")


def test_clients_that_leave_while_queued_free_their_place(replicas) -> None:
    """One leaves after 1 s of waiting for a slot: it leaves the queue then, while the slots are still held
    (a stream is watched for its client while it waits, as a plain request is). One leaves just before a
    slot frees for it: whichever way the gateway learns of it, every slot comes back, none through the
    garbage collector."""
    g = replicas[0]
    key = new_key(g)
    auth = {"Authorization": f"Bearer {key}"}
    body = {"model": "capped", "messages": MESSAGES, "stream": True}

    def state() -> tuple[int, int]:
        snap = scheduler(g)
        return snap["in_service"]["interactive"], snap["waiting"]["interactive"]

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            held = []
            for _ in range(2):  # two long streams hold both slots until the test closes them
                long = [{"role": "user", "content": " ".join(["word"] * 100)}]  # a reply of 100+ chunks
                cm = http.stream("POST", f"{g.base_url}/chat/completions", headers=auth,
                                 json={**body, "messages": long, "max_tokens": 200})
                chunks = (await cm.__aenter__()).aiter_bytes()
                await chunks.__anext__()
                held.append((cm, chunks))
            patient = asyncio.ensure_future(http.post(f"{g.base_url}/chat/completions", headers=auth,
                                                      json={**body, "max_tokens": 1}))
            await until(lambda: state() == (2, 1), "two in service, one waiting")
            await asyncio.sleep(1.0)
            patient.cancel()
            await until(lambda: state() == (2, 0), "the one that left after 1 s left the queue")
            hasty = asyncio.ensure_future(http.post(f"{g.base_url}/chat/completions", headers=auth,
                                                    json={**body, "max_tokens": 1}))
            await until(lambda: state() == (2, 1), "two in service, one waiting", timeout=5)
            hasty.cancel()
            await asyncio.sleep(0.05)
            await held[0][0].__aexit__(None, None, None)  # a slot frees: the hasty one, gone, may be granted it
            await until(lambda: state()[1] == 0, "the hasty one granted", timeout=5)
            await held[1][0].__aexit__(None, None, None)
            await asyncio.gather(patient, hasty, return_exceptions=True)

    asyncio.run(go())
    wait_until(lambda: state() == (0, 0), timeout=10, what="every slot back")
    assert scheduler(g)["dropped"] == 0, "a slot was left to the garbage collector"
