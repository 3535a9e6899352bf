#!/usr/bin/env bash
# The whole gateway comparison in one run of the shared harness, then one table.
#
#   bash bench/compare.sh                          # DURATION=10 CONNS="1 32 128" REPEATS=3
#   DURATION=2 CONNS="1 32" REPEATS=1 bash bench/compare.sh      # a quick smoke run
#
# Targets, all against the harness's nginx fake upstream on 127.0.0.1:18080 (core 1):
#   direct (nginx itself), reference-aiohttp, reference (httpx), litellm (1 worker),
#   litellm2 (2 workers), ours-1w and ours-2w (bench/serve_gateway.sh: bench/gateway.yaml,
#   every production feature on, the client key checked against Redis db 14).
# Pinning: wrk and nginx on core 1 (LOAD_CPUS); 1-worker gateways on core 0 (GW_CPUS);
#   2-worker gateways on cores 0,1 (MULTI_CPUS), sharing core 1 with wrk and nginx. The
#   harness pins a custom target's command to GW_CPUS; ours-2w widens that with its own
#   `taskset -c $MULTI_CPUS`, exactly the cores the harness gives litellm2.
# Knobs passed to the harness: DURATION CONNS REPEATS MODES WARMUP GW_CPUS LOAD_CPUS
#   MULTI_CPUS LITELLM_VENV REF_VENV ... (see its header). Also: BENCH_HARNESS (default
#   ../shared/bench relative to the repo), OURS_PORT1/OURS_PORT2 (8101/8102), RESULTS
#   (default bench/results/<UTC time>/), TARGETS (default: all of the above).
# Output: RESULTS/raw.jsonl, summary.md (the harness's per-run tables), env.txt and
#   compare.md (medians + ratios, made by bench/compare_table.py), printed at the end.
# On a shared machine, run it under the CPU lock: flock -o /tmp/bench.lock bash bench/compare.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HARNESS="${BENCH_HARNESS:-../shared/bench}"
case "$HARNESS" in /*) ;; *) HARNESS="$ROOT/$HARNESS" ;; esac
if [ ! -f "$HARNESS/run_gateway_bench.sh" ]; then
  echo "compare.sh: the shared load harness is missing: no $HARNESS/run_gateway_bench.sh" >&2
  echo "  (set BENCH_HARNESS to the folder holding run_gateway_bench.sh, wrk_chat.lua, summarize.py)" >&2
  exit 2
fi
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/llm-gateway" ]; then
  echo "compare.sh: $VENV/bin/llm-gateway is missing; install the project first (make test or make serve)" >&2
  exit 2
fi
command -v redis-cli > /dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping > /dev/null 2>&1 &&
  echo "compare.sh: warning: Redis at 127.0.0.1:6379 does not answer; ours will fail its checks" >&2

export DURATION="${DURATION:-10}" CONNS="${CONNS:-1 32 128}" REPEATS="${REPEATS:-3}"
export MULTI_CPUS="${MULTI_CPUS:-0,1}"
export RESULTS="${RESULTS:-$ROOT/bench/results/$(date -u +%Y-%m-%dT%H%M%SZ)}"
mkdir -p "$RESULTS"
P1="${OURS_PORT1:-8101}" P2="${OURS_PORT2:-8102}"
SERVE="$ROOT/bench/serve_gateway.sh"

if [ -n "${TARGETS:-}" ]; then
  read -r -a TGT <<< "$TARGETS"
else
  TGT=(reference-aiohttp reference litellm litellm2
       "ours-1w=http://127.0.0.1:$P1=exec bash $SERVE $P1 1"
       "ours-2w=http://127.0.0.1:$P2=exec taskset -c $MULTI_CPUS bash $SERVE $P2 2")
fi

echo "compare.sh: DURATION=$DURATION CONNS='$CONNS' REPEATS=$REPEATS -> $RESULTS" >&2
bash "$HARNESS/run_gateway_bench.sh" "${TGT[@]}" 2>&1 | tee "$RESULTS/harness.log" >&2
"${PYTHON:-python3}" "$ROOT/bench/compare_table.py" "$RESULTS/raw.jsonl" > "$RESULTS/compare.md"
{
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(date -u +%F)."
  echo "Pinning: wrk + nginx on core ${LOAD_CPUS:-1}; 1-worker gateways on core ${GW_CPUS:-0}; 2-worker ones on cores $MULTI_CPUS."
  echo "Command: DURATION=$DURATION CONNS=\"$CONNS\" REPEATS=$REPEATS bash bench/compare.sh"
} >> "$RESULTS/compare.md"
cat "$RESULTS/compare.md"
echo "compare.sh: results in $RESULTS (compare.md, summary.md, raw.jsonl, env.txt)" >&2
