"""Cache hits and Redis-backed rate limiting, measured against a fast simulated backend in one run.

Starts a simulated vLLM server and the gateway (Redis from $REDIS_URL or
redis://127.0.0.1:6379/15, a private key prefix; clients use a virtual key that every
request checks against Redis, as in the gateway comparison, bench/compare.sh), then runs wrk against four
paths, repeated and interleaved, after one unrecorded warm-up per path, and prints medians:

  hit            a deterministic request answered from the cache
  hit+limits     the same, on a route with RPM/TPM limits (one Lua call per request)
  backend        the same request with Cache-Control: no-store, served by the simulator
  redis ping     one Redis round trip (redis-benchmark, 1 connection)

    python bench/cache_bench.py --duration 5 --reps 3
Needs wrk (Debian: apt-get install wrk). Pinned as ../shared/bench/run_gateway_bench.sh pins:
the gateway to core 0, the load (wrk and the simulated backend) to core 1. On a shared machine
run it under the CPU lock: flock -o /tmp/bench.lock python bench/cache_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.server import free_port  # noqa: E402

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "%(model)s", "temperature": 0, "messages": [{"role": "user", "content": "bench"}]}'
wrk.headers["Authorization"] = "Bearer %(key)s"
%(extra)s
"""
CLIENT_KEY = "sk-bench-master-key"
ADMIN_KEY = "sk-bench-admin-key"


def wrk(url: str, model: str, conns: int, duration: int, extra: str = "") -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) from one wrk run pinned to core 1."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"model": model, "extra": extra, "key": CLIENT_KEY})
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
                          "-s", f.name, f"{url}/v1/chat/completions"], capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        raise SystemExit(f"errors during the run:\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return rps, pct("50"), pct("99")


def redis_rtt_ms(url: str) -> float:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    out = subprocess.run(["taskset", "-c", "1", "redis-benchmark", "-h", host, "-p", port, "-c", "1", "-n", "20000",
                          "-t", "ping_mbulk", "--csv"], capture_output=True, text=True, check=True).stdout
    row = [line for line in out.splitlines() if line.startswith('"PING')][0]
    cols = [c.strip('"') for c in row.split(",")]
    return float(cols[4])  # p50_latency_ms (redis 7 csv: test,rps,avg,min,p50,p95,p99,max)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=3, help="seconds of unrecorded load per path before the runs")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    sim_port, gw_port = free_port(), free_port()
    sim = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "tests.sim", "vllm", "--port", str(sim_port)],
                           cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    sim.stdout.readline()
    limits = {"rpm": 10**9, "tpm": 10**12}
    config = {
        "server": {"log_level": "warning", "watch_config": False},
        "redis": {"url": redis_url, "prefix": f"bench:{uuid.uuid4().hex[:8]}:"},
        "providers": {"sim": {"kind": "vllm", "base_url": f"http://127.0.0.1:{sim_port}/v1"}},
        "deployments": [{"name": "sim", "provider": "sim", "model": "vllm-model"}],
        "routes": [{"name": "plain", "deployments": ["sim"]},
                   {"name": "limited", "deployments": ["sim"], "rate_limit": limits}],
        "health_checks": {"interval_s": 30},
    }
    cfg = Path(tempfile.mkdtemp()) / "bench.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ, LLM_GATEWAY_MASTER_KEY=ADMIN_KEY)  # auth on; clients use an imported virtual key
    gw = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "gateway", "serve", "--config", str(cfg),
                           "--port", str(gw_port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{gw_port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"{url}/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                       json={"alias": "cache-bench", "key": CLIENT_KEY})
        assert r.status_code in (201, 409), r.text
        for model in ("plain", "limited"):  # fill the cache
            r = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                           json={"model": model, "temperature": 0, "messages": [{"role": "user", "content": "bench"}]})
            assert r.status_code == 200, r.text
        nostore = 'wrk.headers["Cache-Control"] = "no-store"'
        rows: dict[str, list[tuple[float, float, float]]] = {"hit": [], "hit+limits": [], "backend": []}
        p50_1: dict[str, list[float]] = {k: [] for k in rows}
        rtts = []
        if args.warmup:
            for model, extra in (("plain", ""), ("limited", ""), ("plain", nostore)):
                wrk(url, model, args.conns, args.warmup, extra)
        for _ in range(args.reps):
            rtts.append(redis_rtt_ms(redis_url))
            for name, model, extra in (("hit", "plain", ""), ("hit+limits", "limited", ""),
                                       ("backend", "plain", nostore)):
                rows[name].append(wrk(url, model, args.conns, args.duration, extra))
                p50_1[name].append(wrk(url, model, 1, args.duration, extra)[1])
        rtt = statistics.median(rtts)
        print(f"medians of {args.reps} interleaved runs, {args.duration}s each; gateway on core 0, wrk + simulator on core 1, virtual key")
        print(f"redis round trip (redis-benchmark PING, 1 conn): p50 {rtt:.3f} ms")
        print(f"{'path':12}{'req/s @' + str(args.conns):>12}{'p50 ms @1':>11}{'p99 ms @' + str(args.conns):>12}")
        for name in rows:
            rps = statistics.median(r[0] for r in rows[name])
            p99 = statistics.median(r[2] for r in rows[name])
            print(f"{name:12}{rps:12.0f}{statistics.median(p50_1[name]):11.3f}{p99:12.2f}")
        hit = statistics.median(p50_1["hit"])
        limited = statistics.median(p50_1["hit+limits"])
        print(f"hit p50 minus one redis round trip: {hit - rtt:+.3f} ms   (target <= 1 ms)")
        print(f"rate limiting adds (p50 @1): {limited - hit:+.3f} ms per request")
        print(json.dumps({"rtt_ms": rtt, **{k: v for k, v in rows.items()}}), file=sys.stderr)
    finally:
        gw.terminate()
        sim.terminate()
        gw.wait(10)
        sim.wait(10)


if __name__ == "__main__":
    main()
