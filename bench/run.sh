#!/usr/bin/env bash
# The benchmarks, one entry point (also `make bench WHAT=gateway ARGS=...`). See bench/README.md.
#
#   bash bench/run.sh gateway   # bench/compare.sh: ours 1w/2w vs direct nginx, the reference
#                               #   proxies and LiteLLM 1w/2w, one harness run, one table
#   bash bench/run.sh cache     # bench/cache_bench.py: cache hits / rate limits at 32 conns
#   bash bench/run.sh memory    # bench/memory_soak.py: RSS after 10k and 200k requests, idle RSS
#   bash bench/run.sh local     # bench/llamacpp_stream.py, then bench/llamacpp_batching.py
#   bash bench/run.sh profile   # bench/profile_hot_path.py: py-spy under load, CPU by package
#   bash bench/run.sh engines   # the engine processes: engine_process.py, engine_channel.py,
#                               #   engine_gateway.py streams and memory (BEFORE=DIR: a checkout to compare)
#   BEFORE=DIR bash bench/run.sh before-after   # bench/before_after.sh: this checkout vs DIR, beside aiohttp
#   bash bench/run.sh stream ARGS... | batching ARGS...   # one of the two local-model benchmarks
# Arguments after the command go to its script (gateway: use DURATION/CONNS/REPEATS variables).
# With BENCH_LOCK=/tmp/bench.lock, the load runs wait for that CPU lock (flock -o): the whole
# harness run for gateway, each wrk chunk for memory, the whole script for the others.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/llm-gateway" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -e '.[local,test]'
fi
PY="$VENV/bin/python"
locked() { if [ -n "${BENCH_LOCK:-}" ]; then flock -o "$BENCH_LOCK" "$@"; else "$@"; fi; }

what="${1:-help}"
case "$what" in -*) what=stream ;; *) shift || true ;; esac   # old form: bench/run.sh --reps 11
case "$what" in
  gateway) locked env PYTHON="$PY" bash bench/compare.sh "$@" ;;
  cache)   locked "$PY" bench/cache_bench.py "$@" ;;
  memory)  "$PY" bench/memory_soak.py ${BENCH_LOCK:+--lock "$BENCH_LOCK"} "$@" ;;
  local)   locked "$PY" bench/llamacpp_stream.py; locked "$PY" bench/llamacpp_batching.py ;;
  stream)  locked "$PY" bench/llamacpp_stream.py "$@" ;;
  batching) locked "$PY" bench/llamacpp_batching.py "$@" ;;
  profile) locked "$PY" bench/profile_hot_path.py "$@" ;;
  before-after) locked bash bench/before_after.sh "$@" ;;
  engines) locked "$PY" bench/engine_process.py "$@"; locked "$PY" bench/engine_channel.py
           locked "$PY" bench/engine_gateway.py streams ${BEFORE:+--before "$BEFORE"}
           locked "$PY" bench/engine_gateway.py memory ${BEFORE:+--before "$BEFORE"} ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; [ "$what" = help ] || exit 2 ;;
esac
