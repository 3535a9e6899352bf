#!/usr/bin/env bash
# The gateway as the load harness measures it: bench/gateway.yaml on Redis, N workers, and the
# harness's client key imported as a *virtual* key, so every request is checked against Redis.
#   bench/serve_gateway.sh [PORT] [WORKERS]
# The master key (admin only here) is sk-bench-admin-key. Stops with its process group.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:-8000}
WORKERS=${2:-1}
VENV=${VENV:-.venv}
export REDIS_URL=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/14}
export BENCH_UPSTREAM_KEY=${BENCH_UPSTREAM_KEY:-sk-upstream-unused}
export LLM_GATEWAY_MASTER_KEY=sk-bench-admin-key
CLIENT_KEY=${API_KEY:-sk-bench-master-key}

"$VENV/bin/llm-gateway" serve --config bench/gateway.yaml --port "$PORT" --workers "$WORKERS" &
GW=$!
trap 'kill $GW 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT/health" && break
  kill -0 $GW 2>/dev/null || exit 1
  sleep 0.1
done
# Import the client key once; on later runs it is already there (409), which is fine.
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$PORT/admin/keys" \
  -H "Authorization: Bearer $LLM_GATEWAY_MASTER_KEY" -H 'Content-Type: application/json' \
  -d "{\"alias\":\"bench-client\",\"key\":\"$CLIENT_KEY\"}")
case "$code" in 201|409) ;; *) echo "importing the client key failed: HTTP $code" >&2; exit 1 ;; esac
wait $GW
