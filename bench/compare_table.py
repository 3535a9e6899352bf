#!/usr/bin/env python3
"""The gateway comparison table from the harness's raw.jsonl: medians over repetitions.

usage: python3 bench/compare_table.py RESULTS/raw.jsonl [--ours1 ours-1w] [--ours2 ours-2w]

Reads the one-line-per-wrk-run records that ../shared/bench/run_gateway_bench.sh writes
(label.target / label.mode / label.conns / label.rep, rps, lat_p50_ms, lat_p99_ms, err_*),
takes for every target, mode and connection count the median over the repetitions, and prints
Markdown: one row per target, then the ratios (ours/direct, ours/reference-aiohttp,
ours/LiteLLM, 2 workers/1 worker) and the performance targets checked against the medians.
Only standard library; any cell without data shows "-".
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict

# (mode, conns, what to show besides req/s)
COLUMNS = [("json", 1, "p50"), ("json", 32, ""), ("json", 128, "p99+err"), ("sse", 1, ""), ("sse", 32, ""),
           ("sse", 128, "p99+err")]


def errors(r: dict) -> int:
    return sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))


def load(path: str) -> dict:
    runs = defaultdict(list)
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                lab = r["label"]
                runs[(lab["target"], lab["mode"], int(lab["conns"]))].append(r)
    return runs


def med(runs, target, mode, conns):
    """Medians for one cell: dict(rps, p50, p99, errors (sum), n) or None."""
    rs = runs.get((target, mode, conns))
    if not rs:
        return None
    return {"rps": statistics.median(r["rps"] for r in rs),
            "p50": statistics.median(r["lat_p50_ms"] for r in rs),
            "p99": statistics.median(r["lat_p99_ms"] for r in rs),
            "errors": sum(errors(r) for r in rs), "n": len(rs)}


def num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def cell(m, extra: str) -> str:
    if m is None:
        return "-"
    s = num(m["rps"])
    if extra == "p50":
        s += f", p50 {m['p50']:.2f} ms"
    if extra == "p99+err":
        s += f", p99 {m['p99']:.1f} ms, {m['errors']} err"
    elif m["errors"]:
        s += f", **{m['errors']} err**"
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--ours1", default="ours-1w", help="harness target name of our 1-worker gateway")
    ap.add_argument("--ours2", default="ours-2w", help="harness target name of our 2-worker gateway")
    args = ap.parse_args()
    runs = load(args.raw)
    rows = [("direct", "direct nginx (the limit)"),
            ("reference-aiohttp", "reference-aiohttp (FastAPI + aiohttp), 1 worker"),
            ("reference", "reference (FastAPI + httpx), 1 worker"),
            ("litellm", "LiteLLM, 1 worker"),
            ("litellm2", "LiteLLM, 2 workers on cores 0,1"),
            (args.ours1, "**ours, 1 worker**"),
            (args.ours2, "**ours, 2 workers on cores 0,1**")]
    reps = sorted({r["label"]["rep"] for rs in runs.values() for r in rs})
    head = ["json c=1", "json c=32", "json c=128", "sse c=1", "sse c=32", "sse c=128"]
    print(f"### Gateway comparison: req/s, medians of {len(reps)} repetition(s)\n")
    print("| target | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for target, title in rows:
        cells = [cell(med(runs, target, mode, c), extra) for mode, c, extra in COLUMNS]
        print(f"| {title} | " + " | ".join(cells) + " |")

    def ratio(a, b, mode, c):
        ma, mb = med(runs, a, mode, c), med(runs, b, mode, c)
        if not ma or not mb or not mb["rps"]:
            return "-"
        return f"{ma['rps'] / mb['rps']:.3g}x"

    print("\n### Ratios of median req/s\n")
    print("| ratio | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for a, b, title in ((args.ours1, "direct", "ours 1w / direct"),
                        (args.ours1, "reference-aiohttp", "ours 1w / reference-aiohttp"),
                        (args.ours1, "reference", "ours 1w / reference (httpx)"),
                        (args.ours1, "litellm", "ours 1w / LiteLLM 1w"),
                        (args.ours2, "litellm2", "ours 2w / LiteLLM 2w"),
                        (args.ours2, args.ours1, "ours 2w / ours 1w")):
        print(f"| {title} | " + " | ".join(ratio(a, b, mode, c) for mode, c, _ in COLUMNS) + " |")

    # The performance targets, checked against the medians of this run (1 worker unless stated).
    j1, j32, j128 = (med(runs, args.ours1, "json", c) for c in (1, 32, 128))
    s32 = med(runs, args.ours1, "sse", 32)
    w2 = med(runs, args.ours2, "json", 32)
    checks = []
    if j32:
        checks.append(("json c=32 >= 1,500 req/s", num(j32["rps"]), j32["rps"] >= 1500))
    if j1:
        checks.append(("json c=1 p50 <= 0.8 ms", f"{j1['p50']:.2f} ms", j1["p50"] <= 0.8))
    if s32:
        checks.append(("sse c=32 >= 1,000 req/s", num(s32["rps"]), s32["rps"] >= 1000))
    if j128:
        checks.append(("json c=128: 0 errors, p99 <= 150 ms", f"{j128['errors']} err, p99 {j128['p99']:.1f} ms",
                       j128["errors"] == 0 and j128["p99"] <= 150))
    s128 = med(runs, args.ours1, "sse", 128)
    if s128:
        checks.append(("sse c=128: 0 errors, p99 <= 150 ms", f"{s128['errors']} err, p99 {s128['p99']:.1f} ms",
                       s128["errors"] == 0 and s128["p99"] <= 150))
    if w2 and j32:
        checks.append(("2 workers >= 1.7x 1 worker (json c=32)", f"{w2['rps'] / j32['rps']:.2f}x",
                       w2["rps"] / j32["rps"] >= 1.7))
    lit = med(runs, "litellm", "json", 32)
    if lit and j32:
        checks.append(("> 15x LiteLLM 1w (json c=32)", f"{j32['rps'] / lit['rps']:.1f}x", j32["rps"] / lit["rps"] > 15))
    ref = med(runs, "reference-aiohttp", "json", 32)
    if ref and j32:
        checks.append((">= 40% of reference-aiohttp (json c=32)", f"{j32['rps'] / ref['rps']:.0%}",
                       j32["rps"] / ref["rps"] >= 0.4))
    if checks:
        print("\n### Targets (ours, medians of this run)\n")
        print("| target | measured | met |")
        print("|---|---:|---|")
        for name, value, ok in checks:
            print(f"| {name} | {value} | {'yes' if ok else 'no'} |")


if __name__ == "__main__":
    main()
