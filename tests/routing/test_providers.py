"""Each provider kind through the gateway, driven by the official OpenAI SDK."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.routing_env import ADMIN_KEY, ANTHROPIC_KEY, OPENAI_KEY, Sims, admin, gw, sims  # noqa: F401
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "How are you"}]


def last(sim):  # type: ignore[no-untyped-def]
    """The sim's latest model request (health checks and /metrics scrapes are recorded too)."""
    return [r for r in sim.requests if r.path.startswith("/v1/") and r.method == "POST"][-1]


def sdk(g: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key="unused", max_retries=0, timeout=30)


def test_anthropic_round_trip(gw: GatewayProcess, sims: Sims) -> None:
    r = sdk(gw).chat.completions.create(model="claude", messages=MSGS, max_tokens=200, stop=["zzz"])
    assert r.choices[0].message.content == canonical_reply(MSGS)
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    sent = last(sims.claude)
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"]
    assert sent.body["system"] == "Be brief."
    assert [m["role"] for m in sent.body["messages"]] == ["user", "assistant", "user"]
    assert sent.body["max_tokens"] == 200 and sent.body["stop_sequences"] == ["zzz"]


def test_anthropic_streaming_with_usage(gw: GatewayProcess) -> None:
    chunks = list(sdk(gw).chat.completions.create(model="claude", messages=MSGS, stream=True,
                                                  stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == canonical_reply(MSGS)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_anthropic_tool_calls(gw: GatewayProcess) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = sdk(gw).chat.completions.create(model="claude", messages=ask, tools=tools)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    follow = [*ask, r.choices[0].message.model_dump(exclude_none=True),
              {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r2 = sdk(gw).chat.completions.create(model="claude", messages=follow, tools=tools)
    assert r2.choices[0].message.content.startswith("Reply to: tool result sunny")
    stream = list(sdk(gw).chat.completions.create(model="claude", messages=ask, tools=tools, stream=True))
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}


def test_anthropic_529_is_retried_then_reported_as_503(gw: GatewayProcess, sims: Sims) -> None:
    sims.claude.add_fault(Fault.status(529, retry_after=0.1))
    assert sdk(gw).chat.completions.create(model="claude", messages=MSGS).choices[0].message.content
    sims.claude.set_fault(Fault.status(529, retry_after=0.1))
    with pytest.raises(openai.InternalServerError) as err:
        sdk(gw).chat.completions.create(model="claude", messages=MSGS)
    assert err.value.status_code == 503 and "retry-after" in err.value.response.headers


def test_openai_upstream_gets_its_key_and_only_openai_fields(gw: GatewayProcess, sims: Sims) -> None:
    r = sdk(gw).chat.completions.create(model="gpt-first", messages=MSGS, extra_body={"top_k": 5, "store": False})
    assert r.choices[0].message.content == canonical_reply(MSGS)
    sent = last(sims.gpt)
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.body["model"] == "sim-model" and "top_k" not in sent.body and sent.body["store"] is False


def test_openai_in_band_stream_error_is_detected(gw: GatewayProcess, sims: Sims) -> None:
    sims.gpt.add_fault(Fault.in_band_error(after_chunks=2))
    stream = sdk(gw).chat.completions.create(model="gpt-first", messages=MSGS, stream=True)
    # The OpenAI deployment cannot continue a message; vLLM 'a' can, so the stream completes.
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == canonical_reply(MSGS)
    assert last(sims.a).body["continue_final_message"] is True


def test_vllm_extras_pass_through(gw: GatewayProcess, sims: Sims) -> None:
    extras = {"top_k": 7, "min_p": 0.1, "repetition_penalty": 1.1, "structured_outputs": {"choice": ["a", "b"]}}
    sdk(gw).chat.completions.create(model="chat-default", messages=MSGS, extra_body=extras)
    sent = last(sims.a).body
    assert {k: sent[k] for k in extras} == extras


def test_models_lists_routes_with_card_metadata(gw: GatewayProcess) -> None:
    models = {m.id: m.model_extra for m in sdk(gw).models.list().data}
    assert {"chat-default", "claude", "weighted", "least-busy"} <= set(models)
    assert models["chat-default"]["quantization"] == "AWQ" and models["chat-default"]["backend"] == "vllm"
    assert models["claude"]["backend"] == "anthropic"


def test_admin_api_needs_the_admin_key_and_masks_secrets(gw: GatewayProcess) -> None:
    assert httpx.get(f"{gw.root_url}/admin/config").status_code == 401
    assert httpx.get(f"{gw.root_url}/admin/config", headers={"Authorization": "Bearer nope"}).status_code == 401
    body = admin(gw, "GET", "/config").json()
    text = json.dumps(body)
    assert OPENAI_KEY not in text and ANTHROPIC_KEY not in text and ADMIN_KEY not in text
    assert body["config"]["providers"]["openai"]["api_key"] == "${SIM_OPENAI_KEY}"
    assert body["version"] == 1 and body["last_reload"]["ok"] is True
    deps = admin(gw, "GET", "/deployments").json()["deployments"]
    assert set(deps["a"]) >= {"breaker", "healthy", "ewma_ttft_ms", "in_flight"}
    logs = gw.logs()
    assert OPENAI_KEY not in logs and ANTHROPIC_KEY not in logs


TENANT_TOKEN = "tenant-credential-7f3a9c2e"  # no key's shape: only scrubbing by value takes it out


def test_an_anthropic_upstream_echoing_a_configured_header_leaks_it_nowhere(sims: Sims) -> None:  # noqa: F811
    """A custom auth header (the provider's `headers`, a `${...}` reference) quoted back by Anthropic in an
    error (an HTTP 400, an in-stream error event, a 500, which the gateway logs): neither the client, the log
    nor the admin API sees it."""
    sims.reset()
    cfg = {"models": [],
           "providers": {"claude": {"kind": "anthropic", "base_url": sims.claude.url, "api_key": "${SIM_ANTHROPIC_KEY}",
                                    "headers": {"x-tenant-token": "${SIM_TENANT_TOKEN}"}}},
           "deployments": [{"name": "claude", "provider": "claude", "model": "claude-haiku-4-5"}],
           "routes": [{"name": "claude", "deployments": ["claude"], "retry": {"max_attempts": 1}}],
           "health_checks": {"interval_s": 5}, "batches": {"enabled": False}}
    env = {"SIM_ANTHROPIC_KEY": ANTHROPIC_KEY, "SIM_TENANT_TOKEN": TENANT_TOKEN, "LLM_GATEWAY_ADMIN_KEY": ADMIN_KEY}
    with GatewayProcess(cfg, env=env) as g:
        sims.claude.add_fault(Fault.status(400, message=f"x-tenant-token {TENANT_TOKEN} is not a tenant here"))
        with pytest.raises(openai.BadRequestError) as err:
            sdk(g).chat.completions.create(model="claude", messages=MSGS)
        assert "x-tenant-token *** is not a tenant here" in err.value.message
        assert TENANT_TOKEN not in err.value.response.text
        assert last(sims.claude).headers["x-tenant-token"] == TENANT_TOKEN, "it was sent"
        sims.claude.add_fault(Fault.in_band_error(after_chunks=2, message=f"tenant {TENANT_TOKEN} is over its quota"))
        streamed = httpx.post(f"{g.base_url}/chat/completions", timeout=30,
                              json={"model": "claude", "messages": MSGS, "stream": True})
        assert "tenant *** is over its quota" in streamed.text and TENANT_TOKEN not in streamed.text, streamed.text
        sims.claude.add_fault(Fault.status(500, message=f"no tenant {TENANT_TOKEN} on this shard"))  # logged too
        failed = httpx.post(f"{g.base_url}/chat/completions", timeout=30, json={"model": "claude", "messages": MSGS})
        assert failed.status_code == 500 and failed.json()["error"]["message"] == "no tenant *** on this shard"
        for path in ("/config", "/deployments"):
            shown = admin(g, "GET", path)
            assert shown.status_code == 200 and TENANT_TOKEN not in shown.text, shown.text
        logs = g.logs(None)
        assert "no tenant *** on this shard" in logs and TENANT_TOKEN not in logs, logs[-3000:]
    sims.reset()
