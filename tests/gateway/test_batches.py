"""The Files and Batch APIs with the official `openai` SDK: batches that run through the gateway's routes,
refusals with line numbers, ownership, cancel (with Redis, and without: state on disk), two replicas on one
Redis running the lines of one batch and one of them killed mid-batch, and a gateway without Redis killed
mid-batch and started again on the same files directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
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


def config(s: Sims, prefix: str | None, files_dir: Path, **batches: Any) -> dict[str, Any]:
    """A gateway with Redis under `prefix`, or without Redis (`prefix` None: batch state on local disk)."""
    return {
        **({"redis": {"url": require_redis(), "prefix": prefix}} if prefix is not None else {}),
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


@pytest.fixture(params=["redis", "disk"])
def either(request: pytest.FixtureRequest, sims: Sims, tmp_path: Path) -> Iterator[tuple[GatewayProcess, dict]]:
    """A gateway with Redis, then one without (its batch state on disk)."""
    sims.reset()
    prefix = unique_prefix() if request.param == "redis" else None
    cfg = config(sims, prefix, tmp_path / "files", max_lines=300)
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


def test_a_200_line_batch_runs_every_line_once(either, sims: Sims) -> None:
    g, _ = either
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


def test_cancel_mid_batch_keeps_the_finished_lines(either, sims: Sims) -> None:
    g, _ = either
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


KILLED_MID = 120  # lines of the batch a replica is killed in: about 5 s of work for two replicas


def requests_per_line(s: Sims) -> Counter[int]:
    """How many times each line reached the upstream (its prompt says which line it is)."""
    return Counter(int(r.body["messages"][0]["content"].removeprefix("Line ")) for r in s.a.requests
                   if r.path == "/v1/chat/completions")


def logged_lines(g: GatewayProcess, batch_id: str) -> set[str]:
    """The request ids of the lines of `batch_id` that this gateway ran (its JSON request log)."""
    out = set()
    for raw in g.log_path.read_text(errors="replace").splitlines():
        if raw.startswith("{") and '"batch_id"' in raw:
            rec = json.loads(raw)
            if rec.get("batch_id") == batch_id:
                out.add(rec["request_id"])
    return out


def test_two_replicas_run_one_batch_and_take_over_the_lines_of_one_killed(sims: Sims, tmp_path: Path) -> None:
    """Two gateways share Redis and the files volume. Both take lines of one batch (a work queue, not a
    replica per batch); the one coordinating it is SIGKILLed with lines in flight. The survivor reclaims those
    pending lines and runs them, takes the batch's coordination over, and completes it: every line exactly
    once in the output, and none that the dead one had recorded run again."""
    import redis

    sims.reset()
    prefix = unique_prefix()
    cfg = config(sims, prefix, tmp_path / "files")
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER}
    sims.a.set_fault(Fault.latency(0.3))
    r = redis.Redis.from_url(require_redis())
    with GatewayProcess(cfg, env=env) as a, GatewayProcess(cfg, env=env) as b:
        secret = key(a)
        client = sdk(a, secret)
        upload = client.files.create(file=("lines.jsonl", jsonl(KILLED_MID)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: logged_lines(a, batch.id) and logged_lines(b, batch.id), timeout=30,
                   what="both replicas running lines of the batch")
        assert client.batches.retrieve(batch.id).status == "in_progress"
        holder = r.get(f"{prefix}batch:{batch.id}:lease")
        assert holder is not None, "a replica coordinates the batch"
        pid = int(holder.decode().split("-")[-2])
        victim, survivor = (a, b) if a.proc is not None and a.proc.pid == pid else (b, a)
        assert victim.proc is not None and victim.proc.pid == pid
        os.kill(pid, signal.SIGKILL)
        victim.proc.wait(10)
        left = r.xpending_range(f"{prefix}batch:{batch.id}:q", "runners", "-", "+", 1000, consumername=holder)
        left_lines = {int(e["message_id"].decode().split("-")[1]) - 1 for e in left}
        recorded = {k.decode() for k in r.hkeys(f"{prefix}batch:{batch.id}:lines")}
        assert left_lines, "the killed replica had lines in flight"
        assert len(recorded) < KILLED_MID - 8, "the kill came mid-batch"
        survivor_client = sdk(survivor, secret)
        done = finished(survivor_client, batch.id, timeout=90)
        assert done.status == "completed", done
        lines = output_lines(survivor_client, done.output_file_id)
        ran_on_survivor = logged_lines(survivor, batch.id)
    sims.a.set_fault(None)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(KILLED_MID)), \
        "no line lost, none twice"
    assert (done.request_counts.completed, done.request_counts.failed) == (KILLED_MID, 0)
    by_id = {line["custom_id"]: line for line in lines}
    reclaimed = [i for i in left_lines if f"req-{i}" not in recorded]
    assert reclaimed, "the killed replica left lines unrecorded"
    for i in reclaimed:
        assert by_id[f"req-{i}"]["response"]["request_id"] in ran_on_survivor, f"line {i}: the survivor ran it"
    sent = requests_per_line(sims)
    assert set(sent) == set(range(KILLED_MID))
    twice = {i for i, n in sent.items() if n > 1}
    assert twice <= left_lines and max(sent.values()) <= 2, "only the lines in flight at the kill ran again"
    assert all(sent[int(c.removeprefix("req-"))] == 1 for c in recorded), "a recorded line never runs again"
    sims.reset()


def test_a_line_running_longer_than_the_lease_is_not_taken_over(sims: Sims, tmp_path: Path) -> None:
    """A replica keeps the lines it runs (a heartbeat): a generation longer than `lease_s` runs once, though
    another replica looks for lines to reclaim all the while."""
    sims.reset()
    cfg = config(sims, unique_prefix(), tmp_path / "files")
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER}
    sims.a.set_fault(Fault.latency(3 * cfg["batches"]["lease_s"]))
    with GatewayProcess(cfg, env=env) as a, GatewayProcess(cfg, env=env):
        client = sdk(a, key(a))
        upload = client.files.create(file=("lines.jsonl", jsonl(6)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        done = finished(client, batch.id, timeout=60)
    sims.a.set_fault(None)
    assert (done.status, done.request_counts.completed) == ("completed", 6)
    assert requests_per_line(sims) == {i: 1 for i in range(6)}, "no line ran twice"
    sims.reset()


def test_a_gateway_without_redis_killed_mid_batch_resumes_it(sims: Sims, tmp_path: Path) -> None:
    """No Redis: batch state is on local disk. A gateway SIGKILLed mid-batch and started again on the same
    files directory resumes the batch from the lines it had recorded; none lost, none of those run again."""
    sims.reset()
    cfg = config(sims, None, tmp_path / "files")
    env = {"LLM_GATEWAY_MASTER_KEY": MASTER}  # without Redis, keys made at run time die with the process
    sims.a.set_fault(Fault.latency(0.2))
    with GatewayProcess(cfg, env=env) as first:
        client = sdk(first, MASTER)
        upload = client.files.create(file=("lines.jsonl", jsonl(60)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        wait_until(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 12, timeout=30,
                   what="the batch under way")
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    journal = tmp_path / "files" / "state" / "lines" / f"{batch.id}.jsonl"
    recorded = {json.loads(row)["c"] for row in journal.read_text().splitlines()}
    assert 12 <= len(recorded) < 60
    with GatewayProcess(cfg, env=env) as second:
        client = sdk(second, MASTER)
        assert client.files.retrieve(upload.id).id == upload.id, "files survive the restart too"
        done = finished(client, batch.id, timeout=60)
        assert done.status == "completed", done
        lines = output_lines(client, done.output_file_id)
    sims.a.set_fault(None)
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(60)], "each once, in input order"
    assert (done.request_counts.completed, done.request_counts.failed) == (60, 0)
    sent = requests_per_line(sims)
    assert set(sent) == set(range(60))
    assert all(sent[int(c.removeprefix("req-"))] == 1 for c in recorded), "a recorded line never runs again"
    assert sum(n - 1 for n in sent.values()) <= cfg["batches"]["concurrency"], "only lines in flight ran again"
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
