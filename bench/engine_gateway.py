"""The engine process as a client sees it: streams through the whole gateway, and its memory.

`--before DIR` runs a checkout of the gateway from before engines had
processes of their own (e.g. `git worktree add /tmp/before d8ad759`) beside
this one, with the same Python environment (so the same llama.cpp build).

    python bench/engine_gateway.py streams --before /tmp/before --reps 5
        concurrent greedy streams (1, 2, 4, 8) through /v1/completions, rounds
        alternating between the two gateways: aggregate tokens/s, their ratio,
        and the CPU the gateway's own process (not the engine's) spends per
        streamed token
    python bench/engine_gateway.py memory --before /tmp/before
        `--workers 2` and the default model: RSS and PSS summed over the whole
        process tree (workers, supervisor, engines), after 16 requests
    python bench/engine_gateway.py restart --reps 5
        SIGKILL the engine of an idle gateway: seconds until `/ready` is 200
        again, and until a request is answered
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.llamacpp.sysinfo import build_features, cpu  # noqa: E402
from tests.proc_tree import cmdline, cpu_seconds, kib, tree  # noqa: E402

MODEL = "gemma-3-270m"
PROMPTS = ["Once upon a time, in a small village by the sea,", "The history of the Roman empire begins",
           "Write a recipe for a chocolate cake:", "The three laws of thermodynamics are",
           "Dear diary, today I went to the market and", "A short poem about the autumn wind:",
           "The best way to learn a new language is", "In the year 2150, humanity finally"]
ENGINE = "backends.llamacpp.host"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """`python -m gateway serve` run from a given checkout."""

    def __init__(self, root: Path, workers: int, n_ctx: int = 2048) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory()
        cfg = Path(self._dir.name) / "gateway.yaml"
        cfg.write_text(yaml.safe_dump({"server": {"watch_config": False},
                                       "models": [{"card": MODEL, "n_ctx": n_ctx, "n_threads": 2}],
                                       "logging": {"json_requests": False}}))
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "PYTHONPATH")}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(cfg), "--port",
                                      str(self.port), "--workers", str(workers), "--log-level", "warning"],
                                     cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway from {root} not ready")

    def tree(self) -> list[int]:
        return tree(self.proc.pid)

    def own_cpu_s(self) -> float:
        """CPU of the gateway's processes, engine processes left out."""
        return sum(cpu_seconds(p) for p in self.tree() if ENGINE not in cmdline(p))

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._dir.cleanup()


def stream(url: str, prompt: str, tokens: int) -> int:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    n = 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600,
                      headers={"Cache-Control": "no-store"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if '"usage":{' in line:
                n = int(line.split('"completion_tokens":')[1].split(",")[0])
    return n


def round_(gw: Gateway, streams: int, tokens: int) -> tuple[float, float]:
    """(aggregate tokens/s, gateway CPU µs per token) of `streams` concurrent streams."""
    results = [0] * streams

    def one(i: int) -> None:
        results[i] = stream(gw.url, PROMPTS[i % len(PROMPTS)], tokens)

    c0, t0 = gw.own_cpu_s(), time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, c1 = time.perf_counter() - t0, gw.own_cpu_s()
    assert all(r == tokens for r in results), results
    return streams * tokens / wall, (c1 - c0) / (streams * tokens) * 1e6


def header() -> None:
    c = cpu()
    print(f"# {c['model']} ({c['arch']}; flags: {' '.join(c['flags'])}); llama.cpp features: "
          f"{' '.join(build_features())}; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)


def streams_mode(args: argparse.Namespace) -> None:
    roots = [("after", ROOT)] + ([("before", Path(args.before))] if args.before else [])
    gws = {name: Gateway(root, workers=1) for name, root in roots}
    try:
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for b in (1, 2, 4, 8):
            for name, gw in gws.items():
                round_(gw, b, 8)  # warm this batch shape
            for _ in range(args.reps):
                for name, gw in gws.items():
                    results.setdefault((name, b), []).append(round_(gw, b, args.tokens))
    finally:
        for gw in gws.values():
            gw.close()
    med = statistics.median
    print(f"\nmedians of {args.reps} alternating rounds, {args.tokens} tokens per stream, 1 worker\n")
    if args.before:
        print("| streams | before tok/s | after tok/s | after / before | after: gateway CPU µs/token |"
              "\n|---|---|---|---|---|")
    else:
        print("| streams | tok/s | gateway CPU µs/token |\n|---|---|---|")
    for b in (1, 2, 4, 8):
        after = results[("after", b)]
        a_tps, a_cpu = med(r[0] for r in after), med(r[1] for r in after)
        if args.before:
            b_tps = med(r[0] for r in results[("before", b)])
            print(f"| {b} | {b_tps:.1f} | {a_tps:.1f} | **{a_tps / b_tps:.3f}** | {a_cpu:.0f} |")
        else:
            print(f"| {b} | {a_tps:.1f} | {a_cpu:.0f} |")


def memory_mode(args: argparse.Namespace) -> None:
    roots = [("after", ROOT)] + ([("before", Path(args.before))] if args.before else [])
    print("\n| gateway | processes | RSS MiB (sum) | PSS MiB (sum) | engine processes |\n|---|---|---|---|---|")
    breakdown: list[str] = []
    for name, root in roots:
        gw = Gateway(root, workers=2, n_ctx=8192)
        try:
            for i in range(16):
                httpx.post(f"{gw.url}/v1/chat/completions", timeout=120, json={
                    "model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": PROMPTS[i % 8]}]})
            time.sleep(1.0)
            tree = gw.tree()
            rss = sum(kib(p, "status", "VmRSS") for p in tree) / 1024
            pss = sum(kib(p, "smaps_rollup", "Pss") for p in tree) / 1024
            engines = sum(1 for p in tree if ENGINE in cmdline(p))
            parts = ", ".join(f"{_role(gw, p)} {kib(p, 'status', 'VmRSS') / 1024:.0f}/"
                              f"{kib(p, 'smaps_rollup', 'Pss') / 1024:.0f}" for p in tree)
            print(f"| {name} ({root}) | {len(tree)} | {rss:.0f} | {pss:.0f} | {engines} |", flush=True)
            breakdown.append(f"{name}: {parts}")
        finally:
            gw.close()
    print("\nper process, RSS/PSS MiB: " + "; ".join(breakdown))


def _role(gw: Gateway, pid: int) -> str:
    cmd = cmdline(pid)
    if pid == gw.proc.pid:
        return "supervisor"
    if ENGINE in cmd:
        return "engine"
    if "resource_tracker" in cmd:
        return "mp-helper"
    return "worker"


def restart_mode(args: argparse.Namespace) -> None:
    import signal

    gw = Gateway(ROOT, workers=1)
    ready_s, answer_s = [], []
    try:
        for _ in range(args.reps):
            pid = httpx.get(f"{gw.url}/ready", timeout=5).json()["backends"][MODEL]["engines"][0]["pid"]
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while httpx.get(f"{gw.url}/ready", timeout=5).status_code == 200:  # until the gateway has noticed
                time.sleep(0.005)
            while httpx.get(f"{gw.url}/ready", timeout=5).status_code != 200:
                time.sleep(0.01)
            ready_s.append(time.monotonic() - t0)
            r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=60, json={
                "model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200, r.text
            answer_s.append(time.monotonic() - t0)
            time.sleep(1.0)
    finally:
        gw.close()
    print(f"\nSIGKILL of an idle engine, {args.reps} times (restarts 1..{args.reps}, so the backoff grows): "
          f"/ready 200 again after {', '.join(f'{x:.2f}' for x in ready_s)} s; a request answered after "
          f"{', '.join(f'{x:.2f}' for x in answer_s)} s (median {statistics.median(answer_s):.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["streams", "memory", "restart"])
    ap.add_argument("--before", help="a checkout of the gateway to compare with")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    header()
    {"streams": streams_mode, "memory": memory_mode, "restart": restart_mode}[args.mode](args)


if __name__ == "__main__":
    main()
