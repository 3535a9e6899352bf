#!/usr/bin/env bash
# Run the gateway benchmarks with the project's .venv (created by `make test` or `make serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e '.[test]'
"$VENV/bin/python" bench/llamacpp_stream.py "$@"
