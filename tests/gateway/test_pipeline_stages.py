"""The request pipeline's stages on their own: admit, look_up, route, answer, and serve, the chain of them.

No server and no subprocess: the stages take plain values (services with in-memory stores, a runtime
built by hand around a scripted backend), so each rule of the pipeline is checked where it lives.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import orjson
import pytest

from backends.base import Backend, BackendStatus
from backends.contract import responses as fmt
from backends.contract.errors import GatewayError, UpstreamError
from backends.contract.priority import Priority
from backends.contract.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.admission import admit
from gateway.observe import RequestRecord
from gateway.pipeline import Call, look_up, serve
from gateway.services import Services
from gateway.settings import Settings
from gateway.usage import period_id
from routing.breaker import CircuitBreaker
from routing.config import DeploymentConfig, GatewayConfig, RouteConfig
from routing.deployment import Deployment
from routing.runtime import Route, Runtime


class Scripted(Backend):
    """Answers from a script: a body, or a stream of chunks; or fails with the error it is given."""

    kind = "scripted"

    def __init__(self, name: str = "fake", fail: GatewayError | None = None, usage: bool = True) -> None:
        super().__init__(name, None)
        self.calls: list[SamplingFields] = []
        self.fail = fail
        self.usage = usage

    async def start(self) -> None: ...
    async def aclose(self) -> None: ...

    def status(self) -> BackendStatus:
        return BackendStatus(self.name, self.kind, "ready")

    async def chat(self, request: ChatCompletionRequest, ctx: Any) -> dict[str, Any]:
        self.calls.append(request)
        if self.fail:
            raise self.fail
        return fmt.chat_response(id="chatcmpl-1", created=1, model="m", fingerprint="fp", choices=[("hi there", "stop")],
                                 prompt_tokens=7, completion_tokens=2)

    async def chat_stream(self, request: ChatCompletionRequest, ctx: Any) -> AsyncIterator[bytes]:
        self.calls.append(request)
        if self.fail:
            raise self.fail
        chunks = fmt.ChatChunks(id="chatcmpl-2", created=1, model="m", fingerprint="fp",
                                include_usage=request.include_usage)
        frames = [chunks.role(0), chunks.content(0, "hi "), chunks.content(0, "there"), chunks.finish(0, "stop")]
        if request.include_usage and self.usage:
            frames.append(chunks.usage(7, 2))
        frames.append(fmt.DONE)

        async def gen() -> AsyncIterator[bytes]:
            yield frames[0] + frames[1]  # two frames in one read, as an upstream may send them
            for f in frames[2:]:
                yield f

        return gen()

    async def completion(self, request: CompletionRequest, ctx: Any) -> dict[str, Any]:
        self.calls.append(request)
        return fmt.completion_response(id="cmpl-1", created=1, model="m", fingerprint="fp", choices=[("ok", "stop")],
                                       prompt_tokens=3, completion_tokens=1)

    async def completion_stream(self, request: CompletionRequest, ctx: Any) -> AsyncIterator[bytes]:
        raise NotImplementedError


def runtime(backend: Backend, **route: Any) -> Runtime:
    config = GatewayConfig.model_validate({"cache": {"enabled": True}})
    dep = Deployment(DeploymentConfig(name=backend.name, provider="p", model="m"), backend,
                     CircuitBreaker(config.breaker))
    r = Route(RouteConfig(name="r", deployments=[backend.name], **route), [dep])
    return Runtime(config=config, version=1, routes={"r": r}, route_list=[r], deployments={dep.name: dep},
                   backends={dep.name: backend}, pools={})


def chat(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "r", "messages": [{"role": "user", "content": "hi"}],
                                                 **extra})


def call(body: SamplingFields, headers: dict[str, str] | None = None) -> Call:
    rec = RequestRecord("req-1", body.endpoint)
    return Call(body, headers or {}, "req-1", rec, lambda work: work)


async def body_of(response: Any) -> bytes:
    if hasattr(response, "body_iterator"):
        return b"".join([c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator])
    return response.body


@pytest.fixture
def svc() -> Services:
    return Services.build(GatewayConfig(), None, Settings())  # no Redis URL: the in-memory stores; no keys


async def test_admit_plans_and_prepares_the_cache_key_only_for_deterministic_requests(svc: Services) -> None:
    rt = runtime(Scripted())
    sampled = await admit(svc, rt, chat(), {}, RequestRecord("r", "chat"))
    assert sampled.plan.route.name == "r" and sampled.lookup.key is None and sampled.principal.alias is None
    greedy = await admit(svc, rt, chat(temperature=0), {}, RequestRecord("r", "chat"))
    assert greedy.lookup.key is not None and greedy.reservation is None  # no limits: nothing counted


async def test_an_invalid_request_is_refused_only_after_the_caller_is_known(svc: Services) -> None:
    rt = runtime(Scripted())
    with pytest.raises(GatewayError) as err:
        await admit(svc, rt, chat(model="nope"), {}, RequestRecord("r", "chat"))
    assert err.value.status_code == 404
    svc = Services.build(GatewayConfig(), None, Settings(master_key="sk-master-test"))
    with pytest.raises(GatewayError) as err:
        await admit(svc, rt, chat(model="nope"), {}, RequestRecord("r", "chat"))
    assert err.value.status_code == 401, "an anonymous caller learns nothing of the models"
    with pytest.raises(GatewayError) as err:
        await admit(svc, rt, chat(model="nope"), {"authorization": "Bearer sk-master-test"}, RequestRecord("r", "chat"))
    assert err.value.status_code == 404


async def test_the_second_identical_request_is_a_cache_hit_and_never_reaches_the_backend(svc: Services) -> None:
    backend = Scripted()
    rt = runtime(backend)
    first = await serve(svc, rt, call(chat(temperature=0)))
    assert first.headers["x-gateway-cache"] == "miss" and first.headers["x-gateway-deployment"] == "fake"
    second = await serve(svc, rt, call(chat(temperature=0)))
    assert second.headers["x-gateway-cache"] == "hit" and second.headers["x-gateway-deployment"] == "cache"
    assert orjson.loads(await body_of(second))["choices"][0]["message"]["content"] == "hi there"
    assert len(backend.calls) == 1


async def test_a_streamed_answer_is_assembled_once_for_the_cache_and_replayed(svc: Services) -> None:
    backend = Scripted()
    rt = runtime(backend)
    c = call(chat(temperature=0, stream=True))
    streamed = await body_of(await serve(svc, rt, c))
    assert b'"usage":{' not in streamed, "the usage the gateway asked for is not passed to a client that did not"
    assert backend.calls[0].include_usage, "the backend was asked for usage, for accounting"
    assert (c.rec.prompt_tokens, c.rec.completion_tokens) == (7, 2)
    replayed = await body_of(await serve(svc, rt, call(chat(temperature=0, stream=True))))
    texts = [orjson.loads(f[6:])["choices"][0]["delta"].get("content", "")
             for f in fmt.split_frames(replayed) if f.startswith(b"data: {")]
    assert "".join(texts) == "hi there" and replayed.endswith(fmt.DONE) and len(backend.calls) == 1


async def test_an_answer_without_usage_is_billed_on_the_plans_one_prompt_count(svc: Services) -> None:
    rt = runtime(Scripted(usage=False))
    c = call(chat(stream=True))
    await body_of(await serve(svc, rt, c))
    assert c.rec.prompt_tokens > 0 and c.rec.completion_tokens == 2  # two content frames


@pytest.mark.parametrize("priority", [Priority.NEAR_REAL_TIME, Priority.BATCH])
async def test_usage_is_counted_in_the_class_the_call_was_given(svc: Services, priority: Priority) -> None:
    """The class a call carries is its record's tier, and every settlement (a body, a stream, a cache hit)
    counts its usage in that tier."""
    rt = runtime(Scripted())
    for body in (chat(), chat(stream=True), chat(temperature=0), chat(temperature=0)):  # the last: a cache hit
        c = call(body)
        c.priority = priority
        await body_of(await serve(svc, rt, c))
        assert c.rec.tier == priority.label
    await body_of(await serve(svc, rt, call(chat())))  # no class given: interactive
    rows = {(r["deployment"], r["tier"]): r["requests"]
            for r in await svc.usage.report_deployments([period_id("daily")])}
    assert rows == {("fake", priority.label): 3, ("cache", priority.label): 1, ("fake", "interactive"): 1}


async def test_look_up_says_bypass_miss_and_hit(svc: Services) -> None:
    rt = runtime(Scripted())
    admitted = await admit(svc, rt, chat(), {}, RequestRecord("r", "chat"))
    rec = RequestRecord("r", "chat")
    assert await look_up(svc, admitted, rec) == (None, None) and rec.cache == "bypass"
    admitted = await admit(svc, rt, chat(temperature=0), {}, RequestRecord("r", "chat"))
    assert await look_up(svc, admitted, rec) == (None, None) and rec.cache == "miss"
    await svc.cache.put(admitted.lookup.key, {"choices": []}, ttl_s=60, stale_grace_s=0, max_entry_bytes=10_000)
    fresh, stale = await look_up(svc, admitted, rec)
    assert fresh is not None and stale is None and rec.cache == "hit"


async def test_an_expired_entry_answers_when_every_deployment_fails(svc: Services) -> None:
    backend = Scripted()
    rt = runtime(backend, cache={"ttl_s": 0.05, "stale_grace_s": 60})
    await serve(svc, rt, call(chat(temperature=0)))
    await asyncio.sleep(0.1)  # the entry's freshness is the point here: 50 ms, then stale for a minute
    backend.fail = UpstreamError("down", status_code=503)
    stale = await serve(svc, rt, call(chat(temperature=0)))
    assert stale.headers["x-gateway-degraded"] == "stale-cache" and stale.headers["x-gateway-cache"] == "hit"
    assert orjson.loads(await body_of(stale))["choices"][0]["message"]["content"] == "hi there"


async def test_a_route_rate_limit_refuses_the_request_beyond_it_with_its_headers(svc: Services) -> None:
    backend = Scripted()
    rt = runtime(backend, rate_limit={"rpm": 1})
    ok = await serve(svc, rt, call(chat()))
    assert ok.status_code == 200 and ok.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(GatewayError) as err:
        await serve(svc, rt, call(chat()))
    assert err.value.status_code == 429 and err.value.code == "rate_limit_exceeded"
    assert int(err.value.headers["Retry-After"]) >= 1 and len(backend.calls) == 1


async def test_a_request_naming_no_max_tokens_reserves_usage_default_max_tokens_on_every_tpm(
        svc: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """One default for every TPM reservation: the route's limit and the deployment's cap both hold the prompt
    plus usage.default_max_tokens times n (a request's own max_tokens wins, in both)."""
    backend = Scripted()
    config = GatewayConfig.model_validate({"usage": {"default_max_tokens": 300}})
    dep = Deployment(DeploymentConfig(name="fake", provider="p", model="m", tpm=1_000_000), backend,
                     CircuitBreaker(config.breaker))
    r = Route(RouteConfig(name="r", deployments=["fake"], rate_limit={"tpm": 1_000_000}), [dep])
    rt = Runtime(config=config, version=1, routes={"r": r}, route_list=[r], deployments={"fake": dep},
                 backends={"fake": backend}, pools={})
    taken: dict[str, int] = {}
    acquire = svc.limiter.acquire

    async def recorded(subject: str, spec: Any, tokens: int) -> Any:
        taken[subject] = tokens
        return await acquire(subject, spec, tokens)

    monkeypatch.setattr(svc.limiter, "acquire", recorded)
    for extra, generated in (({"n": 2}, 2 * 300), ({"max_tokens": 40}, 40)):
        taken.clear()
        assert (await serve(svc, rt, call(chat(**extra)))).status_code == 200
        assert set(taken) == {"route:r", "dep:fake"} and taken["route:r"] == taken["dep:fake"], taken
        prompt = taken["route:r"] - generated
        assert 0 < prompt < 20, taken  # "hi", counted


async def test_a_client_error_from_the_backend_is_the_clients_and_never_a_failover(svc: Services) -> None:
    backend = Scripted(fail=UpstreamError("bad request", status_code=400))
    rt = runtime(backend)
    with pytest.raises(GatewayError) as err:
        await serve(svc, rt, call(chat()))
    assert err.value.status_code == 400 and rt.deployments["fake"].breaker.state == "closed"


async def test_the_endpoint_is_the_requests_own(svc: Services) -> None:
    backend = Scripted()
    rt = runtime(backend)
    body = CompletionRequest.model_validate({"model": "r", "prompt": "x"})
    response = await serve(svc, rt, call(body))
    assert orjson.loads(await body_of(response))["object"] == "text_completion"
    assert body.endpoint == "completions" and chat().endpoint == "chat"


class Breaking(Scripted):
    """Streams two content chunks, then the connection breaks (no finish, no usage)."""

    kind = "breaking"

    async def chat_stream(self, request: ChatCompletionRequest, ctx: Any) -> AsyncIterator[bytes]:
        self.calls.append(request)
        chunks = fmt.ChatChunks(id="chatcmpl-b", created=1, model="m", fingerprint="fp",
                                include_usage=request.include_usage)

        async def gen() -> AsyncIterator[bytes]:
            yield chunks.role(0)
            yield chunks.content(0, "hi ")
            yield chunks.content(0, "the")
            raise UpstreamError("connection reset", status_code=502)

        return gen()


class Continuing(Scripted):
    """Continues a partial answer: says the rest, and reports its own leg's usage."""

    kind = "continuing"
    supports_continuation = True

    async def chat_stream(self, request: ChatCompletionRequest, ctx: Any) -> AsyncIterator[bytes]:
        self.calls.append(request)
        self.continued_from = ctx.continue_from
        chunks = fmt.ChatChunks(id="chatcmpl-c", created=2, model="m2", fingerprint="fp2",
                                include_usage=request.include_usage)
        frames = [chunks.role(0), chunks.content(0, "re"), chunks.finish(0, "stop"), chunks.usage(11, 1), fmt.DONE]

        async def gen() -> AsyncIterator[bytes]:
            for f in frames:
                yield f

        return gen()


def two_deployment_runtime(first: Backend, second: Backend) -> Runtime:
    config = GatewayConfig.model_validate({"cache": {"enabled": True}})
    deps = [Deployment(DeploymentConfig(name=b.name, provider="p", model="m", cost_per_mtok=1_000_000), b,
                       CircuitBreaker(config.breaker)) for b in (first, second)]
    r = Route(RouteConfig(name="r", deployments=[d.name for d in deps]), deps)
    return Runtime(config=config, version=1, routes={"r": r}, route_list=[r], deployments={d.name: d for d in deps},
                   backends={d.name: d.backend for d in deps}, pools={})


async def test_a_rescued_stream_is_billed_per_leg_and_its_usage_is_the_sum(svc: Services) -> None:
    rescuer = Continuing("rescuer")
    rt = two_deployment_runtime(Breaking("primary"), rescuer)
    c = call(chat(stream=True, stream_options={"include_usage": True}))
    body = await body_of(await serve(svc, rt, c))
    frames = [orjson.loads(f[6:]) for f in fmt.split_frames(body) if f.startswith(b"data: {")]
    text = "".join(ch["delta"].get("content", "") for f in frames for ch in f["choices"])
    assert text == "hi there" and rescuer.continued_from == "hi the" and body.endswith(fmt.DONE)
    usage = frames[-1]["usage"]
    first_leg_prompt = usage["prompt_tokens"] - 11
    assert first_leg_prompt > 0, "the broken leg's prompt is in the total"
    assert usage["completion_tokens"] == 2 + 1 and usage["total_tokens"] == usage["prompt_tokens"] + 3
    assert {f["id"] for f in frames} == {"chatcmpl-b"}, "the continuation looks like the original stream"
    assert (c.rec.prompt_tokens, c.rec.completion_tokens) == (usage["prompt_tokens"], 3)
    assert (c.rec.deployment, c.rec.attempts, c.rec.status) == ("rescuer", 2, 200)
    rows = {r["deployment"]: r for r in await svc.usage.report_deployments([_today()])}
    assert rows["primary"]["requests"] == 0 and rows["rescuer"]["requests"] == 1, "one request, two legs"
    assert (rows["primary"]["prompt_tokens"], rows["primary"]["completion_tokens"]) == (first_leg_prompt, 2)
    assert (rows["rescuer"]["prompt_tokens"], rows["rescuer"]["completion_tokens"]) == (11, 1)
    # $1 per token on both: each leg costs its own tokens, billed to the deployment that produced them
    assert rows["primary"]["cost_usd"] == pytest.approx(first_leg_prompt + 2)
    assert rows["rescuer"]["cost_usd"] == pytest.approx(12)


async def test_a_failure_after_the_stream_started_is_counted_like_one_before(svc: Services) -> None:
    from gateway import metrics

    def count(metric: Any, *labels: str) -> float:
        return metric.labels(*labels)._value.get()

    retries, failovers = count(metrics.RETRIES, "r", "primary"), count(metrics.FAILOVERS, "r")
    rt = two_deployment_runtime(Breaking("primary"), Continuing("rescuer"))
    await body_of(await serve(svc, rt, call(chat(stream=True))))
    assert count(metrics.RETRIES, "r", "primary") == retries + 1, "the broken leg's deployment, counted"
    assert count(metrics.FAILOVERS, "r") == failovers + 1, "a rescue is a failover"


async def test_a_broken_stream_that_nothing_rescued_is_not_logged_as_a_200(svc: Services) -> None:
    rt = runtime(Breaking(), stream_continuation=False)
    c = call(chat(stream=True))
    body = await body_of(await serve(svc, rt, c))
    assert b'"code":"upstream_error"' in body or b'"error"' in body
    assert body.endswith(fmt.DONE) and c.rec.status == 502 and c.rec.error_code


async def test_a_refused_request_still_counts_its_attempts(svc: Services) -> None:
    rt = runtime(Scripted(fail=UpstreamError("bad request", status_code=400)))
    c = call(chat())
    with pytest.raises(GatewayError):
        await serve(svc, rt, c)
    assert c.rec.attempts == 1, "an upstream 400 was one attempt, not none"


def _today() -> str:
    from gateway.usage import period_id

    return period_id("daily")


def scheduled_runtime(backend: Backend, **route: Any) -> Runtime:
    """One deployment of one slot, on a route that may hold one request at a time."""
    config = GatewayConfig.model_validate({"cache": {"enabled": False}})
    dep = Deployment(DeploymentConfig(name=backend.name, provider="p", model="m", max_concurrency=1), backend,
                     CircuitBreaker(config.breaker))
    r = Route(RouteConfig(name="r", deployments=[backend.name], max_concurrent_requests=1, **route), [dep])
    return Runtime(config=config, version=1, routes={"r": r}, route_list=[r], deployments={dep.name: dep},
                   backends={dep.name: backend}, pools={})


async def test_a_stream_never_read_gives_back_its_slot_and_its_place_when_its_response_is_over(svc: Services) -> None:
    rt = scheduled_runtime(Scripted(), timeouts={"queue_s": 0.05})
    dep = rt.deployments["fake"]
    c = call(chat(stream=True))
    response = await serve(svc, rt, c)
    assert dep.scheduler.snapshot()["in_service"]["interactive"] == 1 and svc.concurrency.held("route:r") == 1
    with pytest.raises(GatewayError) as err:  # the route's one place is taken
        await serve(svc, rt, call(chat()))
    assert err.value.status_code == 429 and err.value.code == "concurrency_limit_exceeded"
    # Starlette runs a plain function in a worker thread, where waking the next waiter's future is unsafe.
    assert response.background.is_async, "the response's end must run on the event loop"
    await response.background()  # what Starlette runs once the response is over, read or not
    assert dep.scheduler.snapshot()["in_service"]["interactive"] == 0 and svc.concurrency.held("route:r") == 0
    assert c.rec.done and c.rec.status == 499 and dep.scheduler.dropped == 0
    assert (await serve(svc, rt, call(chat()))).status_code == 200
    # A stream its client left while a chunk was being sent: its generator stays suspended (its `finally`
    # waits for it to be closed), but the response is over, and both come back.
    c = call(chat(stream=True))
    response = await serve(svc, rt, c)
    await response.body_iterator.__anext__()
    await response.background()
    assert dep.scheduler.snapshot()["in_service"]["interactive"] == 0 and svc.concurrency.held("route:r") == 0
    assert not c.rec.done, "the record is the stream's to finish, with what it relayed"
    await response.body_iterator.aclose()
    assert c.rec.done


async def test_the_class_reaches_the_backend_and_the_response(svc: Services) -> None:
    from backends.contract import priority

    seen: list[Any] = []

    class Watching(Scripted):
        async def chat(self, request: ChatCompletionRequest, ctx: Any) -> dict[str, Any]:
            seen.append(priority.current.get())
            return await super().chat(request, ctx)

    rt = runtime(Watching())
    response = await serve(svc, rt, call(chat(), {"x-gateway-priority": "near-real-time"}))
    assert response.headers["x-gateway-priority"] == "near-real-time"
    assert seen[0].priority is priority.Priority.NEAR_REAL_TIME and seen[0].tenant == "anonymous"
    batch = call(chat())
    batch.priority = priority.Priority.BATCH  # a batch line
    await serve(svc, rt, batch)
    assert seen[1].priority is priority.Priority.BATCH and batch.rec.priority is priority.Priority.BATCH
