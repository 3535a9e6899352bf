#!/usr/bin/env bash
# The gateway before and after a change, in one run of the shared harness, beside the thin aiohttp proxy.
#
#   BEFORE=DIR bash bench/before_after.sh      # DIR: a checkout of the old commit (git worktree add DIR REV)
#   DURATION=10 CONNS="1 32" MODES="json sse" REPEATS=3 (defaults); BENCH_HARNESS as in compare.sh
#
# Both gateways run their own checkout's bench/serve_gateway.sh (bench/gateway.yaml: Redis keys, limits,
# cache lookup, metrics, request log) with this checkout's .venv; PYTHONPATH picks whose code runs. The
# harness pins each to core 0 and the load to core 1, measures nginx directly first in each repetition
# and reverses the order of the targets on even repetitions. Prints medians and the ratios
# before/reference-aiohttp, after/reference-aiohttp and after/before; results in bench/results/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${BEFORE:?set BEFORE to a checkout of the commit to compare with}"
BEFORE="$(cd "$BEFORE" && pwd)"
HARNESS="${BENCH_HARNESS:-../shared/bench}"
case "$HARNESS" in /*) ;; *) HARNESS="$ROOT/$HARNESS" ;; esac
VENV="$(cd "${VENV:-.venv}" && pwd)"
export DURATION="${DURATION:-10}" CONNS="${CONNS:-1 32}" MODES="${MODES:-json sse}" REPEATS="${REPEATS:-3}"
export RESULTS="${RESULTS:-$ROOT/bench/results/before-after-$(date -u +%Y-%m-%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
bash "$HARNESS/run_gateway_bench.sh" reference-aiohttp \
  "before=http://127.0.0.1:8101=exec env PYTHONPATH=$BEFORE VENV=$VENV bash $BEFORE/bench/serve_gateway.sh 8101 1" \
  "after=http://127.0.0.1:8103=exec env PYTHONPATH=$ROOT VENV=$VENV bash $ROOT/bench/serve_gateway.sh 8103 1" \
  2>&1 | tee "$RESULTS/harness.log" >&2
"$VENV/bin/python" - "$RESULTS/raw.jsonl" <<'PY' | tee "$RESULTS/before-after.md"
import json, statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    if line.strip():
        r = json.loads(line)
        lab = r["label"]
        runs[(lab["target"], lab["mode"], int(lab["conns"]))].append(r["rps"])
print("| cell | reference-aiohttp | before | after | before/ref | after/ref | after/before |")
print("|---|---|---|---|---|---|---|")
for mode, conns in sorted({(m, c) for _, m, c in runs}):
    ref, b, a = (statistics.median(runs[(t, mode, conns)]) for t in ("reference-aiohttp", "before", "after"))
    print(f"| {mode} c={conns} | {ref:,.0f} | {b:,.0f} | {a:,.0f} | {b / ref:.3f} | {a / ref:.3f} | {a / b:.3f} |")
print()
print("req/s medians over", max(len(v) for v in runs.values()), "repetitions;",
      "each run:", {f"{t} {m} c={c}": [round(x) for x in v] for (t, m, c), v in sorted(runs.items())
                    if t in ("before", "after")})
PY
echo "before_after.sh: results in $RESULTS" >&2
