#!/usr/bin/env python3
"""Memory soak: the gateway's RSS after 10,000 and after 200,000 requests, and at idle.

Starts the gateway as bench/serve_gateway.sh does (bench/gateway.yaml, no local model, every
production feature on, the client key imported as a virtual key and checked against Redis db 14;
started here as `python -m gateway serve` on a copy of the config, so a pkill aimed at someone
else's `llm-gateway serve` or serve_gateway.sh cannot hit it) pinned to core 0
(cores 0,1 with --workers 2), in front of the harness's nginx fake upstream on 127.0.0.1:18080
(used if it already answers, else started here from ../shared/bench/make_upstream_conf.py, pinned
to core 1). wrk (1 thread, core 1) drives a json/sse mix in chunks; RSS is VmRSS from
/proc/PID/status, summed over the workers when there are several (the supervisor is shown apart).

    python3 bench/memory_soak.py                        # 200,000 requests, 32 connections
    python3 bench/memory_soak.py --lock /tmp/bench.lock # each wrk chunk under `flock -o LOCK`
    python3 bench/memory_soak.py --workers 2 --requests 50000 --first 5000

Targets: RSS after 200,000 within 10% of RSS after 10,000; idle RSS < 150 MB.
Needs wrk, nginx (only if no upstream answers), taskset, curl-free (urllib), Redis.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEY = os.environ.get("API_KEY", "sk-bench-master-key")
ADMIN_KEY = "sk-bench-admin-key"

# wrk script: a json/sse mix (every Nth request streams), stops after SOAK_REQUESTS responses,
# prints one JSON line.
LUA = r"""
local limit = tonumber(os.getenv("SOAK_REQUESTS"))
local sse_every = tonumber(os.getenv("SOAK_SSE_EVERY"))
local key = os.getenv("SOAK_KEY")
local n, i, bad = 0, 0, 0
local json_req, sse_req
local function body(model, stream)
  return '{"model":"' .. model .. '","messages":[' ..
    '{"role":"system","content":"You are a helpful assistant."},' ..
    '{"role":"user","content":"Say hello to the benchmark in one short sentence."}],' ..
    '"max_tokens":32,"temperature":0' .. (stream and ',"stream":true' or '') .. '}'
end
function init(args)
  local h = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  json_req = wrk.format("POST", wrk.path, h, body("fake-model", false))
  sse_req = wrk.format("POST", wrk.path, h, body("fake-model-stream", true))
end
function request()
  i = i + 1
  if sse_every > 0 and i % sse_every == 0 then return sse_req end
  return json_req
end
function response(status, headers, body)
  n = n + 1
  if status ~= 200 then bad = bad + 1 end
  if n == limit then
    io.write("SOAK_LIMIT\n"); io.flush()  -- wrk's main thread sleeps for -d: the runner sends SIGINT
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('SOAK {"requests":%d,"duration_s":%.3f,"errors":%d,"p50_ms":%.3f,"p99_ms":%.3f}\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def status(req: str | urllib.request.Request, timeout: float) -> int:
    """The HTTP status of a request (its body read and dropped); 0 when nothing answers."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def _post(url: str, body: bytes, key: str) -> urllib.request.Request:
    return urllib.request.Request(url, method="POST", data=body,
                                  headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def get(url: str, timeout: float = 2.0) -> int:
    return status(url, timeout)


def post_chat(base: str) -> int:
    body = b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}]}'
    return status(_post(f"{base}/v1/chat/completions", body, KEY), 5)


def import_key(base: str) -> int:
    """Import the harness's client key as a virtual key (409: already there), as serve_gateway.sh does."""
    body = json.dumps({"alias": "bench-client", "key": KEY}).encode()
    return status(_post(f"{base}/admin/keys", body, ADMIN_KEY), 5)


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode(errors="replace")
    except OSError:
        return ""


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gateway_processes(main: int) -> tuple[int, list[int]]:
    """(the gateway process, its worker processes when --workers > 1)."""
    if not Path(f"/proc/{main}").exists():
        raise SystemExit(f"the gateway process {main} is gone")
    workers = [p for p in children(main) if "multiprocessing" in cmdline(p) and "resource_tracker" not in cmdline(p)]
    return main, workers


def measure(pid: int) -> dict:
    main, workers = gateway_processes(pid)
    if workers:
        w = [rss_kb(p) for p in workers]
        return {"rss_mb": sum(w) / 1024, "workers_mb": [x / 1024 for x in w], "supervisor_mb": rss_kb(main) / 1024}
    return {"rss_mb": rss_kb(main) / 1024, "workers_mb": [], "supervisor_mb": None}


def ensure_upstream(port: int, harness: Path, tmp: Path) -> subprocess.Popen | None:
    if get(f"http://127.0.0.1:{port}/v1/models") == 200:
        print(f"fake upstream already answering on 127.0.0.1:{port}; using it", file=sys.stderr)
        return None
    conf = tmp / "nginx.conf"
    conf.write_text(subprocess.run([sys.executable, str(harness / "make_upstream_conf.py"), str(port), str(tmp)],
                                   check=True, capture_output=True, text=True).stdout)
    proc = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(conf), "-p", f"{tmp}/"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp / "nginx.log", "w"), start_new_session=True)
    for _ in range(50):
        if get(f"http://127.0.0.1:{port}/v1/models") == 200:
            print(f"started nginx fake upstream on 127.0.0.1:{port} (core 1)", file=sys.stderr)
            return proc
        time.sleep(0.1)
    raise SystemExit(f"nginx fake upstream did not start; see {tmp}/nginx.log")


def run_chunk(url: str, lua: Path, n: int, args) -> dict:
    """One wrk run that ends after n responses (SIGINT once the script reports the count)."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{args.conns}", f"-d{args.max_chunk_s}s", "--timeout", "30s",
           "-s", str(lua), f"{url}/v1/chat/completions"]
    env = dict(os.environ, SOAK_REQUESTS=str(n), SOAK_SSE_EVERY=str(args.sse_every), SOAK_KEY=KEY)
    lock = open(args.lock, "a") if args.lock else None
    try:
        if lock:  # what `flock -o LOCK wrk ...` does: wrk does not inherit the lock's descriptor
            fcntl.flock(lock, fcntl.LOCK_EX)
        wrk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        result = None
        for ln in wrk.stdout:
            if ln.startswith("SOAK_LIMIT"):
                wrk.send_signal(signal.SIGINT)
            elif ln.startswith("SOAK "):
                result = json.loads(ln[5:])
        err = wrk.stderr.read()
        if wrk.wait() != 0 or result is None:
            raise SystemExit(f"wrk failed (rc {wrk.returncode}): {err}")
        return result
    finally:
        if lock:
            lock.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--first", type=int, default=10_000, help="requests before the first RSS reading")
    ap.add_argument("--chunk", type=int, default=50_000, help="requests per wrk run after the first reading")
    ap.add_argument("--max-chunk-s", type=int, default=240, help="wrk duration cap per chunk")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--sse-every", type=int, default=4, help="every Nth request streams (0: json only)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--port", type=int, default=8110)
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="the project's Python")
    ap.add_argument("--upstream-port", type=int, default=18080)
    ap.add_argument("--lock", default=os.environ.get("BENCH_LOCK"),
                    help="hold this flock(2) lock (as `flock -o LOCK`) during each wrk chunk, not while the gateway idles")
    ap.add_argument("--harness", default=os.environ.get("BENCH_HARNESS", str(ROOT.parent / "shared" / "bench")))
    args = ap.parse_args()
    for tool in ("wrk", "taskset") + (("flock",) if args.lock else ()):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    harness = Path(args.harness).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="memory-soak-"))
    lua = tmp / "soak.lua"
    lua.write_text(LUA)
    upstream = ensure_upstream(args.upstream_port, harness, tmp)
    cpus = "0" if args.workers == 1 else "0,1"
    gw_log = open(tmp / "gateway.log", "w")
    cfg = tmp / "soak-gateway.yaml"
    shutil.copy(ROOT / "bench" / "gateway.yaml", cfg)
    env = dict(os.environ, REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
               BENCH_UPSTREAM_KEY="sk-upstream-unused", LLM_GATEWAY_MASTER_KEY=ADMIN_KEY)
    gw = subprocess.Popen(["taskset", "-c", cpus, args.python, "-m", "gateway", "serve", "--config", str(cfg),
                           "--port", str(args.port), "--workers", str(args.workers)],
                          cwd=ROOT, env=env, stdout=gw_log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    rows = []
    try:
        t0 = time.monotonic()
        while get(f"{url}/health") != 200:
            if gw.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"the gateway did not start; see {tmp}/gateway.log")
            time.sleep(0.1)
        if args.workers > 1:  # every worker up before the idle reading
            while len(gateway_processes(gw.pid)[1]) < args.workers:
                time.sleep(0.1)
        startup_s = time.monotonic() - t0
        time.sleep(2.0)
        idle = measure(gw.pid)
        code = import_key(url)
        if code not in (201, 409):
            raise SystemExit(f"importing the client key failed: HTTP {code}")
        while post_chat(url) != 200:
            if gw.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"the gateway does not answer chat requests; see {tmp}/gateway.log")
            time.sleep(0.2)
        done, errors = 0, 0
        targets = [args.first] + list(range(args.first + args.chunk, args.requests, args.chunk)) + [args.requests]
        for target in targets:
            s = run_chunk(url, lua, target - done, args)
            done += s["requests"]
            errors += s["errors"]
            m = measure(gw.pid)
            rows.append({"requests": done, "errors": errors, **m, "chunk_rps": s["requests"] / s["duration_s"],
                         "p99_ms": s["p99_ms"]})
            print(f"  after {done:>7,} requests: RSS {m['rss_mb']:.1f} MB  ({s['requests'] / s['duration_s']:,.0f} req/s, "
                  f"p99 {s['p99_ms']:.1f} ms, errors so far {errors})", file=sys.stderr)
    finally:
        os.killpg(gw.pid, signal.SIGTERM)
        try:
            gw.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(gw.pid, signal.SIGKILL)
        if upstream is not None:
            os.killpg(upstream.pid, signal.SIGTERM)
            upstream.wait(10)

    first, last = rows[0], rows[-1]
    ratio = last["rss_mb"] / first["rss_mb"]
    mix = f"1 in {args.sse_every} streamed (sse), the rest json" if args.sse_every else "json only"
    print(f"### Memory soak: {args.workers} worker(s), {args.conns} connections, {mix}\n")
    print("| reading | requests | RSS MB |" + (" workers MB | supervisor MB |" if args.workers > 1 else ""))
    print("|---|---:|---:|" + ("---|---:|" if args.workers > 1 else ""))

    def line(name, req, m):
        extra = (f" {' + '.join(f'{w:.1f}' for w in m['workers_mb'])} | {m['supervisor_mb']:.1f} |"
                 if args.workers > 1 else "")
        print(f"| {name} | {req} | {m['rss_mb']:.1f} |{extra}")

    line("idle, right after startup", 0, idle)
    for r in rows:
        line("after load", f"{r['requests']:,}", r)
    print(f"\n- RSS after {last['requests']:,} / after {first['requests']:,} requests: **{ratio:.3f}** "
          f"({(ratio - 1) * 100:+.1f}%; target within 10%: {'met' if abs(ratio - 1) <= 0.10 else 'not met'})")
    print(f"- idle RSS right after startup: **{idle['rss_mb']:.1f} MB** (target < 150 MB: "
          f"{'met' if idle['rss_mb'] < 150 else 'not met'}); startup to /health {startup_s:.1f} s")
    print(f"- errors: {last['errors']} of {last['requests']:,} requests; gateway on core(s) {cpus}, wrk on core 1; "
          f"{'each chunk under flock -o ' + args.lock if args.lock else 'no CPU lock'}")
    print(f"- machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d', time.gmtime())} UTC; "
          f"command: python3 bench/memory_soak.py --requests {args.requests} --workers {args.workers}")


if __name__ == "__main__":
    main()
