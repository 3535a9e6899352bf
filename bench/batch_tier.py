"""The batch tier on the local model: does a running batch hurt interactive latency, how fast does the
batch itself go, and does `max_concurrent_requests` keep one tenant from starving another.

One gateway on the embedded Gemma 3 270M (cache off, so every request reaches the model), three parts:

1. Interactive latency, idle against with a 200-line batch running. `--interactive` streamed chat requests
   one after another (`--max-tokens` each); time to first token and total time, median of each. The same
   requests run first on an idle gateway, then while the batch runs (a request counts only if the batch
   was still in progress when it ended). Goal: at most 1.5x idle at the median.
2. The batch's own speed: completion tokens per second from `in_progress_at` to `completed_at`, against
   the same 200 lines sent straight to /v1/chat/completions with as many in flight as the batch runner
   uses (`batches.concurrency`).
3. Fair share: tenant A keeps 8 streams in flight, tenant B sends one stream at a time; B's latency with no
   limit, then with A's key at `max_concurrent_requests: 2`. Both keys are interactive.

Repeat with --reps and quote medians: the machine is noisy (2 shared cores here).

    python bench/batch_tier.py --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.embeddings import cpu_name  # noqa: E402
from tests.server import GatewayProcess  # noqa: E402

MASTER = "sk-bench-master-key-0123456789"
MODEL = "gemma-3-270m"
TOPICS = ["rivers", "volcanoes", "bicycles", "tea", "owls", "comets", "bridges", "violins", "deserts", "coral"]


def prompt(i: int) -> str:
    return f"Write two sentences about {TOPICS[i % len(TOPICS)]} (note {i})."


def batch_file(lines: int, max_tokens: int) -> bytes:
    return b"".join(json.dumps({
        "custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": max_tokens,
                 "temperature": 0}}).encode() + b"\n" for i in range(lines))


async def stream_once(client: httpx.AsyncClient, key: str, i: int, max_tokens: int) -> tuple[float, float]:
    """(time to first content token, total) of one streamed chat request, in seconds."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt(1000 + i)}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total


async def interactive(client: httpx.AsyncClient, key: str, n: int, max_tokens: int,
                      still_running=None) -> list[tuple[float, float]]:
    out = []
    for i in range(n):
        ttft, total = await stream_once(client, key, i, max_tokens)
        if still_running is None or await still_running():
            out.append((ttft, total))
    return out


async def admin_key(client: httpx.AsyncClient, alias: str, **fields: Any) -> str:
    r = await client.post("/admin/keys", json={"alias": alias, **fields},
                          headers={"Authorization": f"Bearer {MASTER}"})
    r.raise_for_status()
    return r.json()["key"]


async def start_batch(api: httpx.AsyncClient, key: str, lines: int, max_tokens: int) -> str:
    auth = {"Authorization": f"Bearer {key}"}
    r = await api.post("/files", headers=auth, data={"purpose": "batch"},
                       files={"file": ("bench.jsonl", batch_file(lines, max_tokens), "application/jsonl")})
    r.raise_for_status()
    r = await api.post("/batches", headers=auth, json={"input_file_id": r.json()["id"],
                                                       "endpoint": "/v1/chat/completions",
                                                       "completion_window": "24h"})
    r.raise_for_status()
    return r.json()["id"]


async def batch_state(api: httpx.AsyncClient, key: str, batch_id: str) -> dict[str, Any]:
    r = await api.get(f"/batches/{batch_id}", headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    return r.json()


async def batch_tokens(api: httpx.AsyncClient, key: str, state: dict[str, Any]) -> int:
    r = await api.get(f"/files/{state['output_file_id']}/content", headers={"Authorization": f"Bearer {key}"})
    r.raise_for_status()
    rows = [json.loads(line) for line in r.text.splitlines() if line]
    return sum(row["response"]["body"]["usage"]["completion_tokens"] for row in rows)


async def direct_tokens_per_s(api: httpx.AsyncClient, key: str, lines: int, max_tokens: int,
                              concurrency: int) -> float:
    """The batch's lines as plain chat requests, `concurrency` in flight: completion tokens per second."""
    todo = iter(range(lines))
    tokens = 0

    async def worker() -> None:
        nonlocal tokens
        for i in todo:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": max_tokens,
                    "temperature": 0}
            r = await api.post("/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens / (time.perf_counter() - t0)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def part_batch(gw: GatewayProcess, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gw.root_url, timeout=300) as root, \
            httpx.AsyncClient(base_url=gw.base_url, timeout=300) as api:
        key = await admin_key(root, f"batch-{rep}")
        await interactive(api, key, 3, args.max_tokens)  # warm-up: the key's first look-up, the first prompts
        idle = await interactive(api, key, args.interactive, args.max_tokens)
        batch_id = await start_batch(api, key, args.lines, args.batch_max_tokens)
        t_wait = time.perf_counter()
        while (await batch_state(api, key, batch_id))["request_counts"]["completed"] < 2:
            if time.perf_counter() - t_wait > 120:
                raise RuntimeError("the batch did not start")
            await asyncio.sleep(0.2)

        async def running() -> bool:
            return (await batch_state(api, key, batch_id))["status"] == "in_progress"

        loaded = await interactive(api, key, args.interactive, args.max_tokens, running)
        while (state := await batch_state(api, key, batch_id))["status"] not in ("completed", "failed", "expired"):
            await asyncio.sleep(0.5)
        assert state["status"] == "completed", state
        idle += await interactive(api, key, args.interactive, args.max_tokens)  # idle again, after the batch
        counts = state["request_counts"]
        tokens = await batch_tokens(api, key, state)
        batch_tps = tokens / max(1e-9, state["completed_at"] - state["in_progress_at"])
        direct_tps = await direct_tokens_per_s(api, key, args.lines, args.batch_max_tokens, args.concurrency)
    return {"idle_ttft": med([t for t, _ in idle]), "idle_total": med([t for _, t in idle]),
            "batch_ttft": med([t for t, _ in loaded]), "batch_total": med([t for _, t in loaded]),
            "measured_during_batch": len(loaded), "batch_lines_ok": counts["completed"] - counts["failed"],
            "batch_tokens": tokens, "batch_tok_s": batch_tps, "direct_tok_s": direct_tps}


async def part_fairness(gw: GatewayProcess, args: argparse.Namespace, rep: int, limit: int | None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gw.root_url, timeout=300) as root, \
            httpx.AsyncClient(base_url=gw.base_url, timeout=300) as api:
        fields = {"max_concurrent_requests": limit} if limit else {}
        heavy = await admin_key(root, f"heavy-{rep}-{limit}", **fields)
        light = await admin_key(root, f"light-{rep}-{limit}")
        stop = asyncio.Event()

        async def flood(k: int) -> None:
            i = 0
            while not stop.is_set():
                await stream_once(api, heavy, 5000 + 100 * k + i, args.max_tokens)
                i += 1

        floods = [asyncio.create_task(flood(k)) for k in range(8)]
        await asyncio.sleep(2.0)  # let the 8 streams fill the engine
        light_runs = await interactive(api, light, args.interactive, args.max_tokens)
        stop.set()
        await asyncio.gather(*floods)
    return {"ttft": med([t for t, _ in light_runs]), "total": med([t for _, t in light_runs])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="repeats of each part; medians are quoted")
    ap.add_argument("--lines", type=int, default=200, help="lines of the batch")
    ap.add_argument("--interactive", type=int, default=10, help="interactive requests per measurement")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of an interactive request")
    ap.add_argument("--batch-max-tokens", type=int, default=32, help="max_tokens of a batch line")
    ap.add_argument("--concurrency", type=int, default=2, help="batches.concurrency (lines in flight)")
    ap.add_argument("--parallel", type=int, default=8, help="the local model's engine slots")
    ap.add_argument("--skip-fairness", action="store_true")
    args = ap.parse_args()

    files = tempfile.TemporaryDirectory(prefix="bench-batches-")
    cfg = {"models": [{"card": MODEL, "parallel": args.parallel}], "cache": {"enabled": False},
           "logging": {"json_requests": False},
           "batches": {"files_dir": files.name, "concurrency": args.concurrency}}
    batch_runs, fair_off, fair_on = [], [], []
    with GatewayProcess(cfg, env={"LLM_GATEWAY_MASTER_KEY": MASTER}) as gw:
        for rep in range(args.reps):
            batch_runs.append(asyncio.run(part_batch(gw, args, rep)))
            print(json.dumps({"rep": rep, "part": "batch", **batch_runs[-1]}), flush=True)
            if not args.skip_fairness:
                fair_off.append(asyncio.run(part_fairness(gw, args, rep, None)))
                fair_on.append(asyncio.run(part_fairness(gw, args, rep, 2)))
                print(json.dumps({"rep": rep, "part": "fairness", "no_limit": fair_off[-1],
                                  "limit_2": fair_on[-1]}), flush=True)

    def m(rows: list[dict[str, Any]], field: str) -> float:
        return med([r[field] for r in rows])

    print(f"\nCPU: {cpu_name()}; {args.reps} reps, medians; interactive max_tokens {args.max_tokens}, "
          f"batch {args.lines} lines x max_tokens {args.batch_max_tokens}, batches.concurrency {args.concurrency}, "
          f"engine parallel {args.parallel}")
    print("| interactive, local model | idle | with the batch running | ratio |")
    print("|---|---|---|---|")
    for what in ("ttft", "total"):
        idle, busy = m(batch_runs, f"idle_{what}"), m(batch_runs, f"batch_{what}")
        print(f"| {'time to first token' if what == 'ttft' else 'total'} (ms) | {idle * 1000:.0f} | "
              f"{busy * 1000:.0f} | {busy / idle:.2f}x |")
    bt, dt = m(batch_runs, "batch_tok_s"), m(batch_runs, "direct_tok_s")
    print(f"\nbatch: {bt:.1f} completion tok/s through the batch tier, {dt:.1f} tok/s sent directly at "
          f"{args.concurrency} in flight: {bt / dt:.2f}x")
    if fair_off:
        print("\n| tenant B (1 stream) while tenant A holds 8 streams | TTFT (ms) | total (ms) |")
        print("|---|---|---|")
        for label, rows in (("A without a limit", fair_off), ("A at max_concurrent_requests 2", fair_on)):
            print(f"| {label} | {m(rows, 'ttft') * 1000:.0f} | {m(rows, 'total') * 1000:.0f} |")


if __name__ == "__main__":
    main()
