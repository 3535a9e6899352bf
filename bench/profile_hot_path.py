#!/usr/bin/env python3
"""Profile the gateway's hot path under load with py-spy, and say where its CPU goes.

Starts the gateway as the harness measures it (bench/gateway.yaml: a 2-deployment priority route,
a virtual key checked against Redis, Redis RPM+TPM limits, the cache lookup, metrics, the JSON
request log) on core 0, in front of the harness's nginx fake upstream, drives it with wrk on
core 1 (json or sse, 32 connections), samples it with `py-spy record --format raw`, and prints
the self time by package and the top functions. The raw profile is kept for flame graphs
(`bench/results/profile-<UTC time>/`).

    python bench/profile_hot_path.py                 # json, 32 connections, 10 s
    python bench/profile_hot_path.py --mode sse --seconds 15

py-spy is installed into the project's .venv if it is missing (it is not a runtime dependency).
Needs wrk, taskset, nginx (only if no fake upstream answers on 18080) and Redis.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_soak import ADMIN_KEY, ROOT, ensure_upstream, get, import_key, post_chat  # noqa: E402

GROUPS = ("gateway", "routing", "backends")  # ours: shown per module; libraries per package


def where(frame: str) -> str:
    """'func (path/to/file.py:12)' -> the package (a library) or the module (ours)."""
    m = re.search(r"\((.*?):\d+\)", frame)
    path = m.group(1) if m else frame
    parts = path.split("/")
    if parts[0] in GROUPS:
        return path
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    return parts[0] if len(parts) > 1 else (path or "(native)")


def summarise(raw: Path, top: int) -> str:
    by_pkg: collections.Counter[str] = collections.Counter()
    by_fn: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        total += int(n)
        by_pkg[where(leaf)] += int(n)
        by_fn[re.sub(r":\d+\)", ")", leaf)] += int(n)
    if not total:
        return "no samples"
    out = [f"{total} samples\n", "| self time | package or module |", "|---|---|"]
    out += [f"| {100 * v / total:.1f}% | {k} |" for k, v in by_pkg.most_common(top)]
    out += ["", "| self time | function |", "|---|---|"]
    out += [f"| {100 * v / total:.1f}% | `{k}` |" for k, v in by_fn.most_common(top)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["json", "sse"], default="json")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--surface", choices=["chat", "responses", "messages"], default="chat",
                    help="the API the load speaks (bench/wrk_surfaces.lua for responses and messages)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--port", type=int, default=8120)
    ap.add_argument("--harness", default=os.environ.get("BENCH_HARNESS", str(ROOT.parent / "shared" / "bench")))
    args = ap.parse_args()
    venv_bin = ROOT / ".venv" / "bin"
    if not (venv_bin / "py-spy").exists():
        subprocess.run([str(venv_bin / "python"), "-m", "pip", "install", "-q", "py-spy"], check=True)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    harness = Path(args.harness).resolve()
    lua = harness / "wrk_chat.lua"
    if not lua.exists():
        raise SystemExit(f"the load harness is not at {harness} (set BENCH_HARNESS)")
    out_dir = ROOT / "bench" / "results" / ("profile-" + datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M%SZ"))
    out_dir.mkdir(parents=True)
    tmp = Path(tempfile.mkdtemp(prefix="profile-"))
    upstream = ensure_upstream(18080, harness, tmp)
    env = dict(os.environ, REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
               BENCH_UPSTREAM_KEY="sk-upstream-unused", LLM_GATEWAY_MASTER_KEY=ADMIN_KEY)
    gw = subprocess.Popen(["taskset", "-c", "0", str(venv_bin / "python"), "-m", "gateway", "serve", "--config",
                           str(ROOT / "bench" / "gateway.yaml"), "--port", str(args.port)],
                          cwd=ROOT, env=env, stdout=open(tmp / "gateway.log", "w"), stderr=subprocess.STDOUT,
                          start_new_session=True)
    url = f"http://127.0.0.1:{args.port}"
    try:
        t0 = time.monotonic()
        while get(f"{url}/health") != 200 or import_key(url) not in (201, 409) or post_chat(url) != 200:
            if gw.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"the gateway did not start; see {tmp}/gateway.log")
            time.sleep(0.2)
        wrk_env = dict(os.environ, BENCH_MODEL="fake-model-stream" if args.mode == "sse" else "fake-model",
                       BENCH_STREAM="1" if args.mode == "sse" else "0", BENCH_SURFACE=args.surface)
        path = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}[args.surface]
        script = lua if args.surface == "chat" else ROOT / "bench" / "wrk_surfaces.lua"
        wrk = subprocess.Popen(["taskset", "-c", "1", "wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds + 3}s",
                                "-s", str(script), f"{url}{path}"],
                               env=wrk_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(2)  # past the warm-up
        raw = out_dir / f"{args.surface}-{args.mode}-c{args.conns}.raw.txt"
        subprocess.run([str(venv_bin / "py-spy"), "record", "-p", str(gw.pid), "-d", str(args.seconds), "-r",
                        str(args.rate), "-f", "raw", "-o", str(raw), "--nonblocking"],
                       check=True, capture_output=True)
        wrk_out = wrk.communicate()[0]
        result = re.search(r"(?:BENCH_RESULT )?(\{\"requests.*\})", wrk_out)
        report = (f"# Hot-path profile: {args.mode}, {args.conns} connections, {args.seconds} s\n\n"
                  f"wrk: {result.group(1) if result else wrk_out[-300:]}\n\n{summarise(raw, args.top)}\n")
        (out_dir / f"{args.surface}-{args.mode}-c{args.conns}.md").write_text(report)
        print(report)
        print(f"raw profile: {raw}", file=sys.stderr)
    finally:
        gw.terminate()
        gw.wait(10)
        if upstream is not None:
            upstream.terminate()


if __name__ == "__main__":
    main()
