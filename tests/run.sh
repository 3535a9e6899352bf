#!/usr/bin/env bash
# Set up .venv and run the whole test suite: `make test` (and CI's .ci/run) call this.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k sdk -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing"
"$VENV/bin/python" -m pip install -q --upgrade pip
# llama.cpp compiled for this CPU without its AMX kernels (they crash); once per CPU, then cached. First, so
# the `local` extra (which the `test` extra includes) finds it installed and pip does not build its own.
bash deploy/install-llama-cpp.sh "$VENV/bin/python"
"$VENV/bin/python" -m pip install -q -e '.[local,test]'
"$VENV/bin/python" -m gateway.grpc_api.codegen >/dev/null  # the gRPC stubs (git-ignored), generated once
bash deploy/install-embedding-model.sh "$VENV/bin/python"
# Headless Chromium for the browser tests: Debian's package, installed once per machine (about 15 s), a check
# after that. Never fatal: without it those tests skip with the reason given here (tests/browser.py).
if why=$(bash tests/install-chromium.sh); then
  unset BROWSER_TESTS_NO_CHROMIUM
else
  export BROWSER_TESTS_NO_CHROMIUM="${why:-tests/install-chromium.sh failed}"
  echo "== browser tests will skip: $BROWSER_TESTS_NO_CHROMIUM"
fi

# Redis: tests talk to a real server. Use $REDIS_URL, else the local one, else start a throwaway one.
redis_answers() {  # host port
  (exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 && [[ "$reply" == +PONG* ]]) 2>/dev/null
}
REDIS_PID=""
cleanup() { if [ -n "$REDIS_PID" ]; then kill "$REDIS_PID" 2>/dev/null || true; fi; }
trap cleanup EXIT
if [ -z "${REDIS_URL:-}" ]; then
  if redis_answers 127.0.0.1 6379; then
    export REDIS_URL="redis://127.0.0.1:6379/15"
  elif command -v redis-server >/dev/null 2>&1; then
    port=$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
    REDIS_PID=$!
    for _ in $(seq 50); do redis_answers 127.0.0.1 "$port" && break; sleep 0.1; done
    export REDIS_URL="redis://127.0.0.1:$port/0"
    echo "== started a throwaway redis-server on port $port"
  else
    echo "error: the tests need Redis. Set REDIS_URL, start one on 127.0.0.1:6379," >&2
    echo "       or install redis-server (Debian: apt-get install redis-server)." >&2
    exit 1
  fi
fi
echo "== redis: $REDIS_URL"

echo "== pytest"
"$VENV/bin/python" -m pytest "$@"
