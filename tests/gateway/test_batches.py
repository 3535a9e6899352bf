"""The Files and Batch APIs with the official `openai` SDK: batches that run through the gateway's routes,
refusals with line numbers, ownership, cancel, and a replica killed mid-batch (two gateways, one Redis)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.paths import ROOT
from tests.redis_env import require_redis, unique_prefix
from tests.routing_env import OPENAI_KEY, Sims, sims  # noqa: F401  (fixtures)
from tests.server import GatewayProcess
from tests.sim import Fault, canonical_reply
from tests.waiting import wait_until

pytestmark = pytest.mark.process  # gateway processes and simulated upstreams

MASTER = "sk-master-batches-0123456789"


def config(s: Sims, prefix: str, files_dir: Path, **batches: Any) -> dict[str, Any]:
    return {
        "redis": {"url": require_redis(), "prefix": prefix},
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model"}],
        "routes": [{"name": "chat", "deployments": ["a"]}],
        "health_checks": {"interval_s": 5},
        "usage": {"flush_interval_s": 0.2},
        "batches": {"files_dir": str(files_dir), "concurrency": 4, "lease_s": 2, **batches},
    }


@pytest.fixture
def setup(sims: Sims, tmp_path: Path) -> Iterator[tuple[GatewayProcess, dict[str, Any]]]:
    sims.reset()
    cfg = config(sims, unique_prefix(), tmp_path / "files", max_lines=300)
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        yield g, cfg
    sims.reset()


def key(g: GatewayProcess) -> str:
    r = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"}, json={"alias": "b"})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def sdk(g: GatewayProcess, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=api_key, max_retries=0, timeout=30)


def jsonl(n: int, url: str = "/v1/chat/completions", model: str = "chat", **extra: Any) -> bytes:
    return b"".join(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url,
                                "body": {"model": model, "messages": [{"role": "user", "content": f"Line {i}"}],
                                         **extra}}).encode() + b"\n" for i in range(n))


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 60, states=("completed",)) -> Any:
    def done() -> Any:
        b = client.batches.retrieve(batch_id)
        return b if b.status in (*states, "failed", "expired", "cancelled", "completed") else None
    return wait_until(done, timeout=timeout, what=f"batch {batch_id} to finish")


def output_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


def test_a_200_line_batch_runs_every_line_once(setup, sims: Sims) -> None:
    g, _ = setup
    client = sdk(g, key(g))
    upload = client.files.create(file=("lines.jsonl", jsonl(200)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"job": "nightly"})
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 200
    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (200, 0)
    assert done.completed_at and done.in_progress_at and done.finalizing_at and done.error_file_id is None
    lines = output_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(200)], "each once, in input order"
    for i, line in enumerate(lines):
        assert line["response"]["status_code"] == 200 and line["error"] is None
        assert line["response"]["body"]["object"] == "chat.completion"  # the upstream's body, passed through
        reply = line["response"]["body"]["choices"][0]["message"]["content"]
        assert reply == canonical_reply([{"role": "user", "content": f"Line {i}"}])
    assert sims.a.count("/v1/chat/completions") == 200, "every line reached the upstream exactly once"
    assert [b.id for b in client.batches.list().data] == [batch.id]
    usage = httpx.get(f"{g.root_url}/admin/usage", headers={"Authorization": f"Bearer {MASTER}"}).json()
    assert sum(r["requests"] for r in usage["rows"] if r["route"] == "chat") >= 200, "lines count as requests"


@pytest.mark.parametrize("content, code, line", [
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\nnot json\n',
     "invalid_json_line", 2),
    (jsonl(2) + jsonl(1), "duplicate_custom_id", 3),
    (b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n', "invalid_method", 1),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/images", "body": {}}\n', "invalid_url", 1),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}\n', "missing_body", 1),
    (jsonl(301), "too_many_requests", 301),
    (jsonl(1) + b'{"custom_id": "s", "method": "POST", "url": "/v1/responses", "body": {"model": "chat", '
     b'"input": "hi", "stream": true}}\n', "invalid_stream", 2),  # no streaming in a batch, on any endpoint
])
def test_bad_files_are_refused_at_upload_with_their_line(setup, content: bytes, code: str, line: int) -> None:
    g, _ = setup
    with pytest.raises(openai.BadRequestError) as err:
        sdk(g, key(g)).files.create(file=("bad.jsonl", content), purpose="batch")
    assert err.value.code == code and f"Line {line}:" in err.value.message
    assert err.value.body["param"] == "file"


def test_a_batch_refuses_a_file_of_another_endpoint_and_other_keys_see_nothing(setup) -> None:
    g, _ = setup
    alice, bob = sdk(g, key(g)), sdk(g, key(g))
    upload = alice.files.create(file=("lines.jsonl", jsonl(3)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        alice.batches.create(input_file_id=upload.id, endpoint="/v1/completions", completion_window="24h")
    assert err.value.code == "mismatched_endpoint" and "Line 1:" in err.value.message
    with pytest.raises(openai.BadRequestError):
        alice.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(upload.id)
    with pytest.raises(openai.NotFoundError):
        bob.files.content(upload.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = alice.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert bob.files.list().data == [] and bob.batches.list().data == []
    assert finished(alice, batch.id).status == "completed"
    assert alice.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(upload.id)


def test_cancel_mid_batch_keeps_the_finished_lines(setup, sims: Sims) -> None:
    g, _ = setup
    client = sdk(g, key(g))
    sims.a.set_fault(Fault.latency(0.3))
    upload = client.files.create(file=("lines.jsonl", jsonl(60)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 4, timeout=30,
               what="a few lines done")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = finished(client, batch.id, states=("cancelled",))
    sims.a.set_fault(None)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    lines = output_lines(client, done.output_file_id)
    assert 4 <= len(lines) < 60 and done.request_counts.completed == len(lines)
    assert len({line["custom_id"] for line in lines}) == len(lines)
    assert sims.a.count("/v1/chat/completions") == len(lines), "nothing started after the cancel went unrecorded"


def test_a_replica_killed_mid_batch_leaves_it_to_the_other(sims: Sims, tmp_path: Path) -> None:
    """Two gateways share Redis and the files volume; the one holding the batch's lease is SIGKILLed; the
    other takes the batch over when the lease lapses, and every line is in the output exactly once."""
    import redis

    sims.reset()
    prefix = unique_prefix()
    cfg = config(sims, prefix, tmp_path / "files")
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER}
    sims.a.set_fault(Fault.latency(0.15))
    with GatewayProcess(cfg, env=env) as a, GatewayProcess(cfg, env=env) as b:
        secret = key(a)
        client = sdk(a, secret)
        upload = client.files.create(file=("lines.jsonl", jsonl(80)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 10, timeout=30,
                   what="the batch under way")
        holder = redis.Redis.from_url(require_redis()).get(f"{prefix}batch:{batch.id}:lease")
        assert holder is not None, "a replica holds the batch"
        pid = int(holder.decode().split("-")[-2])
        running, other = (a, b) if a.proc is not None and a.proc.pid == pid else (b, a)
        assert running.proc is not None and running.proc.pid == pid
        os.kill(pid, signal.SIGKILL)
        running.proc.wait(10)
        survivor = sdk(other, secret)
        done = finished(survivor, batch.id, timeout=90)
        assert done.status == "completed", done
        lines = output_lines(survivor, done.output_file_id)
    sims.a.set_fault(None)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(80)), \
        "no line lost, none twice"
    assert (done.request_counts.completed, done.request_counts.failed) == (80, 0)
    sent = sims.a.count("/v1/chat/completions")
    assert 80 <= sent <= 80 + cfg["batches"]["concurrency"], "only lines in flight at the kill ran again"
    sims.reset()


# -- /v1/responses lines -----------------------------------------------------------------------------------

def responses_jsonl(inputs: list[Any], **extra: Any) -> bytes:
    return b"".join(json.dumps({"custom_id": f"resp-{i}", "method": "POST", "url": "/v1/responses",
                                "body": {"model": "chat", "input": item, **extra}}).encode() + b"\n"
                    for i, item in enumerate(inputs))


def test_a_responses_batch_answers_each_line_with_a_response(setup, sims: Sims, conforms) -> None:
    """Lines of `/v1/responses` are translated to chat and back as the live route does: each output body
    is a Response object (OpenAI's schema), stored for the batch's key, `previous_response_id` read as that
    key, and a line the translation refuses is that line's 400 in the error file."""
    g, _ = setup
    secret = key(g)
    client, other = sdk(g, secret), sdk(g, key(g))
    earlier = client.responses.create(model="chat", input="Remember me")  # live, stored by the same key
    inputs: list[Any] = [f"Line {i}" for i in range(5)]
    data = responses_jsonl(inputs) + json.dumps({
        "custom_id": "follow-up", "method": "POST", "url": "/v1/responses",
        "body": {"model": "chat", "input": "And now?", "previous_response_id": earlier.id,
                 "instructions": "Be brief."}}).encode() + b"\n" + json.dumps({
        "custom_id": "hosted-tool", "method": "POST", "url": "/v1/responses",
        "body": {"model": "chat", "input": "Search", "tools": [{"type": "web_search"}]}}).encode() + b"\n"
    upload = client.files.create(file=("responses.jsonl", data), purpose="batch")
    with pytest.raises(openai.BadRequestError) as err:
        client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert err.value.code == "mismatched_endpoint"
    sent_before = sims.a.count("/v1/chat/completions")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    assert batch.endpoint == "/v1/responses" and batch.request_counts.total == 7
    done = finished(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 1)
    lines = output_lines(client, done.output_file_id)
    assert [line["custom_id"] for line in lines] == [f"resp-{i}" for i in range(5)] + ["follow-up"]
    for i, line in enumerate(lines):
        body = line["response"]["body"]
        assert line["response"]["status_code"] == 200 and line["error"] is None
        conforms("Response", body)
        assert body["object"] == "response" and body["status"] == "completed" and body["id"].startswith("resp")
        text = body["output"][0]["content"][0]["text"]
        if i < 5:
            assert text == canonical_reply([{"role": "user", "content": f"Line {i}"}])
            assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    follow_up = lines[-1]["response"]["body"]
    assert follow_up["previous_response_id"] == earlier.id and follow_up["instructions"] == "Be brief."
    sent = [r.body["messages"] for r in sims.a.requests if r.path == "/v1/chat/completions"][sent_before:]
    assert sims.a.count("/v1/chat/completions") - sent_before == 6, "the refused line reached no upstream"
    history = next(m for m in sent if m[-1]["content"] == "And now?")
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[1]["content"] == "Remember me", "the stored conversation, read as the batch's key"
    stored = client.responses.retrieve(lines[0]["response"]["body"]["id"])  # store: true by default
    assert stored.output_text == canonical_reply([{"role": "user", "content": "Line 0"}])
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(lines[0]["response"]["body"]["id"])
    (refused,) = output_lines(client, done.error_file_id)
    assert refused["custom_id"] == "hosted-tool" and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"].startswith("tools")


# -- tiers: usage, spend, budgets, metrics and logs of batch lines --------------------------------------------

def tier_config(s: Sims, files_dir: Path, with_redis: bool) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "providers": {"vllm-a": {"kind": "vllm", "base_url": f"{s.a.url}/v1"}},
        "deployments": [{"name": "a", "provider": "vllm-a", "model": "vllm-model", "cost_per_mtok": 1000.0}],
        "routes": [{"name": "chat", "deployments": ["a"]}],
        "health_checks": {"interval_s": 5},
        "usage": {"flush_interval_s": 0.2},
        "batches": {"files_dir": str(files_dir), "concurrency": 1, "line_retries": 0},
    }
    if with_redis:
        cfg["redis"] = {"url": require_redis(), "prefix": unique_prefix()}
    return cfg


def admin(g: GatewayProcess, path: str, **params: Any) -> Any:
    r = httpx.get(f"{g.root_url}{path}", params=params, headers={"Authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    return r.json()


def cli(g: GatewayProcess, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway", *args, "--url", g.root_url],
                          cwd=ROOT, env={**os.environ, "LLM_GATEWAY_ADMIN_KEY": MASTER}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "in-process"])
def test_batch_lines_are_their_own_tier_and_spend_the_key_s_budget(sims: Sims, tmp_path: Path,
                                                                   with_redis: bool) -> None:
    sims.reset()
    with GatewayProcess(tier_config(sims, tmp_path / "files", with_redis), env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as g:
        made = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                          json={"alias": "tiers"}).json()
        client = sdk(g, made["key"])
        live = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Live"}])
        upload = client.files.create(file=("lines.jsonl", jsonl(3)), purpose="batch")
        done = finished(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                                      completion_window="24h").id)
        assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
        bodies = [line["response"]["body"] for line in output_lines(client, done.output_file_id)]
        batch_tokens = sum(b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"] for b in bodies)
        live_tokens = live.usage.prompt_tokens + live.usage.completion_tokens

        def counted() -> Any:
            u = admin(g, "/admin/usage", group_by="tier", key_id=made["id"])
            return u if sum(r["requests"] for r in u["rows"]) == 4 else None

        usage = wait_until(counted, timeout=30, what="the batch's usage counted")
        rows = {r["tier"]: r for r in usage["rows"]}
        assert set(rows) == {"interactive", "batch"} and all(r["route"] == "chat" for r in rows.values())
        assert rows["batch"]["requests"] == 3 and rows["interactive"]["requests"] == 1
        assert rows["batch"]["prompt_tokens"] + rows["batch"]["completion_tokens"] == batch_tokens
        assert rows["batch"]["cost_usd"] == pytest.approx(batch_tokens * 1000 / 1e6)
        assert rows["interactive"]["cost_usd"] == pytest.approx(live_tokens * 1000 / 1e6)
        only_batch = admin(g, "/admin/usage", tier="batch")
        assert [(r["tier"], r["requests"]) for r in only_batch["rows"]] == [("batch", 3)]
        plain = admin(g, "/admin/usage", key_id=made["id"])
        assert [(r["requests"], "tier" in r) for r in plain["rows"]] == [(4, False)], "the old shape, every tier"
        assert plain["tiers"]["batch"]["requests"] == 3

        shown = json.loads(cli(g, "usage", "--by-tier", "--tier", "batch", "--key-id", made["id"], "--json"))
        assert [(r["tier"], r["requests"]) for r in shown["rows"]] == [("batch", 3)]
        assert "batch" in cli(g, "usage", "--by-tier")

        report = json.loads(cli(g, "cost", "--days", "1", "--json"))
        tiers = {t["tier"]: t for t in report["tiers"]}
        assert (tiers["batch"]["requests"], tiers["interactive"]["requests"]) == (3, 1)
        assert tiers["batch"]["spend_usd"] == pytest.approx(batch_tokens * 1000 / 1e6)
        assert tiers["batch"]["prompt_tokens"] == rows["batch"]["prompt_tokens"]
        table = cli(g, "cost", "--days", "1")
        assert any(line.startswith("tier batch") for line in table.splitlines()), table

        scraped = httpx.get(f"{g.root_url}/metrics", headers={"Authorization": f"Bearer {MASTER}"}).text
        by_tier = {(s.labels["tier"], s.labels["route"], s.labels["status"]): s.value
                   for family in text_string_to_metric_families(scraped) for s in family.samples
                   if s.name == "llm_gateway_requests_by_tier_total"}
        assert by_tier[("batch", "chat", "200")] == 3 and by_tier[("interactive", "chat", "200")] >= 1
        logged = wait_until(lambda: (r := [json.loads(x) for x in g.logs().splitlines()
                                           if x.startswith('{"ts"') and '"event":"request"' in x]) and len(r) >= 4
                            and r, timeout=10, what="the request log lines")
        assert sorted((x["tier"], "batch_id" in x) for x in logged if x["route"] == "chat") == [
            ("batch", True)] * 3 + [("interactive", False)]

        # A budget: batch lines spend it as any request does, and are refused once it is gone.
        line_cost = rows["batch"]["cost_usd"] / 3
        poor = httpx.post(f"{g.root_url}/admin/keys", headers={"Authorization": f"Bearer {MASTER}"},
                          json={"alias": "poor", "budget_usd": line_cost * 1.5, "budget_period": "daily"}).json()
        poor_client = sdk(g, poor["key"])
        upload = poor_client.files.create(file=("lines.jsonl", jsonl(4)), purpose="batch")
        spent = finished(poor_client, poor_client.batches.create(input_file_id=upload.id,
                                                                 endpoint="/v1/chat/completions",
                                                                 completion_window="24h").id)
        refused = output_lines(poor_client, spent.error_file_id)
        assert (spent.request_counts.completed, spent.request_counts.failed) == (2, 2), "lines run one at a time"
        assert {line["response"]["body"]["error"]["code"] for line in refused} == {"insufficient_quota"}
        assert all(line["response"]["status_code"] == 429 for line in refused)
        with pytest.raises(openai.RateLimitError) as err:
            poor_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Live"}])
        assert err.value.code == "insufficient_quota", "the batch spent the key's budget"
    sims.reset()
