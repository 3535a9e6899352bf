#!/usr/bin/env bash
# Gateway cost per request on the Responses and Messages surfaces against chat completions: the same
# gateway (bench/serve_gateway.sh: Redis key check, limits, cache lookup, metrics, request log), the
# same nginx fake upstream (the shared harness's), the same question, in one run.
#
#   bash bench/surfaces.sh          # DURATION=10 CONNS="1 32" MODES="json sse" REPEATS=3
#
# Pinning as the harness does it: the gateway on core 0, wrk and nginx on core 1. Each repetition runs
# every (mode, connections) cell for chat, responses and messages, in reversed order on even
# repetitions. Prints the median req/s and p50 of each cell and the ratios responses/chat and
# messages/chat; results in bench/results/surfaces-<time>/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HARNESS="${BENCH_HARNESS:-../shared/bench}"
VENV="$(cd "${VENV:-.venv}" && pwd)"
DURATION="${DURATION:-10}" CONNS="${CONNS:-1 32}" MODES="${MODES:-json sse}" REPEATS="${REPEATS:-3}"
GW_CPUS="${GW_CPUS:-0}" LOAD_CPUS="${LOAD_CPUS:-1}" PORT="${PORT:-8101}" UPSTREAM_PORT=18080
RESULTS="${RESULTS:-$ROOT/bench/results/surfaces-$(date -u +%Y-%m-%dT%H%M%SZ)}"
for tool in nginx wrk taskset curl; do
  command -v "$tool" > /dev/null || { echo "surfaces.sh needs $tool (Debian: apt-get install -y nginx wrk)" >&2; exit 1; }
done
[ -f "$HARNESS/make_upstream_conf.py" ] || { echo "the shared bench harness is not at $HARNESS" >&2; exit 1; }
mkdir -p "$RESULTS/upstream"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -- -"$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

python3 "$HARNESS/make_upstream_conf.py" "$UPSTREAM_PORT" "$RESULTS/upstream" > "$RESULTS/upstream/nginx.conf"
setsid taskset -c "$LOAD_CPUS" nginx -c "$RESULTS/upstream/nginx.conf" -p "$RESULTS/upstream/" &
pids+=($!)
setsid taskset -c "$GW_CPUS" env VENV="$VENV" bash bench/serve_gateway.sh "$PORT" 1 > "$RESULTS/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" && curl -sf -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/v1/models" && break
  sleep 0.2
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/ready" || { echo "the gateway did not get ready" >&2; cat "$RESULTS/gateway.log" >&2; exit 1; }

path_of() { case "$1" in chat) echo /v1/chat/completions ;; responses) echo /v1/responses ;; messages) echo /v1/messages ;; esac; }
run() {  # run SURFACE MODE CONNS REP SECONDS RECORD
  local stream=0 model=fake-model out=/dev/null
  [ "$2" = sse ] && stream=1 && model=fake-model-stream
  [ "$6" = 1 ] && out="$RESULTS/raw.jsonl"
  BENCH_SURFACE="$1" BENCH_STREAM="$stream" BENCH_MODEL="$model" BENCH_OUT="$out" \
    BENCH_LABEL="{\"surface\":\"$1\",\"mode\":\"$2\",\"conns\":$3,\"rep\":$4}" \
    taskset -c "$LOAD_CPUS" wrk -t1 -c"$3" -d"$5s" --timeout 10s -s bench/wrk_surfaces.lua \
    "http://127.0.0.1:$PORT$(path_of "$1")" > "$RESULTS/wrk.out" 2>&1 || { cat "$RESULTS/wrk.out" >&2; exit 1; }
}
for surface in chat responses messages; do  # each answers before anything is measured, and is warm
  for mode in $MODES; do run "$surface" "$mode" 8 0 2 0; done
done
for rep in $(seq "$REPEATS"); do
  order="chat responses messages"
  [ $((rep % 2)) = 0 ] && order="messages responses chat"
  for mode in $MODES; do for c in $CONNS; do for surface in $order; do
    run "$surface" "$mode" "$c" "$rep" "$DURATION" 1
  done; done; done
done
{ lscpu | grep -m1 'Model name'; nproc; date -u; git rev-parse --short HEAD; } > "$RESULTS/env.txt"

"$VENV/bin/python" - "$RESULTS/raw.jsonl" <<'PY' | tee "$RESULTS/surfaces.md"
import json, statistics, sys
from collections import defaultdict
rps, p50, errors = defaultdict(list), defaultdict(list), 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    lab = r["label"]
    rps[(lab["surface"], lab["mode"], lab["conns"])].append(r["rps"])
    p50[(lab["surface"], lab["mode"], lab["conns"])].append(r["lat_p50_ms"])
    errors += r["errors"]
print("| cell | chat req/s (p50 ms) | responses req/s (p50 ms) | messages req/s (p50 ms) | responses/chat | messages/chat |")
print("|---|---|---|---|---|---|")
med = statistics.median
for mode, conns in sorted({(m, c) for _, m, c in rps}):
    cells = {s: (med(rps[(s, mode, conns)]), med(p50[(s, mode, conns)])) for s in ("chat", "responses", "messages")}
    print(f"| {mode} c={conns} | " + " | ".join(f"{cells[s][0]:,.0f} ({cells[s][1]:.2f})" for s in cells)
          + f" | {cells['responses'][0] / cells['chat'][0]:.3f} | {cells['messages'][0] / cells['chat'][0]:.3f} |")
print()
print(f"medians over {max(len(v) for v in rps.values())} repetitions; wrk errors: {errors}; each run:",
      {f"{s} {m} c={c}": [round(x) for x in v] for (s, m, c), v in sorted(rps.items())})
PY
echo "surfaces.sh: results in $RESULTS" >&2
