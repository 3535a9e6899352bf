#!/usr/bin/env bash
# Install llama-cpp-python into a Python environment, compiled for this CPU but never with AMX.
#
#   bash deploy/install-llama-cpp.sh .venv/bin/python     # this CPU's features (AVX2, AVX-512, VNNI...), no AMX
#   LLAMA_CPP_BUILD=portable bash deploy/install-llama-cpp.sh PY   # AVX2/FMA/F16C baseline: any x86-64-v3 CPU
#   LLAMA_CPP_CMAKE_ARGS="-D..." bash deploy/install-llama-cpp.sh PY   # your own flags, used exactly as given
#   bash deploy/install-llama-cpp.sh --print-cmake-args   # the flags the above would use (the Dockerfile's)
# (LLAMA_CPP_CPUINFO=FILE reads the CPU flags from FILE instead of /proc/cpuinfo: for the tests.)
#
# Why not llama.cpp's own default (GGML_NATIVE, i.e. -march=native): on a CPU with AMX (Intel Sapphire
# Rapids and later, most current cloud x86 machines) that compiles the AMX matrix kernels, and they crash
# with SIGSEGV in ggml_backend_amx_mul_mat on Q4_K_M models (llama.cpp issue #20824). Turning the
# GGML_AMX_* options off is not enough while GGML_NATIVE is on (-march=native enables AMX anyway), so
# the build here is GGML_NATIVE=OFF with every ISA option spelled out from /proc/cpuinfo. Weight
# repacking (CPU_REPACK) stays on; only AMX is never built.
#
# pip's wheel cache keys a wheel by name and version, not by CMAKE_ARGS, so it would silently hand back
# a wheel built with other flags. Wheels are therefore built with pip's cache off and kept in
# ${LLM_GATEWAY_WHEELS:-~/.cache/llm-gateway/wheels}/llama-cpp-python-<version>-<hash of flags, compiler>,
# and a marker in the environment records which build is installed: an environment holding any
# other build (an older native one, say) is reinstalled on the next run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n 's/.*"llama-cpp-python==\([^";]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)
[ -n "$VERSION" ] || { echo "error: no llama-cpp-python==X pin in $ROOT/pyproject.toml" >&2; exit 1; }

cmake_args() {
  if [ -n "${LLAMA_CPP_CMAKE_ARGS:-}" ]; then echo "$LLAMA_CPP_CMAKE_ARGS"; return; fi
  local no_amx="-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  if [ "$(uname -m)" != x86_64 ]; then echo "-DGGML_NATIVE=ON"; return; fi  # no AMX outside x86
  if [ "${LLAMA_CPP_BUILD:-host}" = portable ]; then
    echo "-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON $no_amx"
    return
  fi
  local flags on=() off=()
  flags=" $(grep -m1 '^flags' "${LLAMA_CPP_CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2) "
  has() { for f in "$@"; do [[ "$flags" == *" $f "* ]] || return 1; done; }
  pick() { local opt=$1; shift; if has "$@"; then on+=("$opt"); else off+=("$opt"); fi; }
  pick SSE42 sse4_2
  pick AVX avx
  pick AVX2 avx2
  pick FMA fma
  pick F16C f16c
  pick BMI2 bmi2
  pick AVX_VNNI avx_vnni
  pick AVX512 avx512f avx512cd avx512vl avx512dq avx512bw
  if has avx512f avx512cd avx512vl avx512dq avx512bw; then
    pick AVX512_VBMI avx512vbmi
    pick AVX512_VNNI avx512_vnni
    pick AVX512_BF16 avx512_bf16
  else
    off+=(AVX512_VBMI AVX512_VNNI AVX512_BF16)
  fi
  local out="-DGGML_NATIVE=OFF"
  for o in "${on[@]}"; do out+=" -DGGML_$o=ON"; done
  for o in "${off[@]}"; do out+=" -DGGML_$o=OFF"; done
  echo "$out $no_amx"
}

if [ "${1:-}" = --print-cmake-args ]; then cmake_args; exit 0; fi
PY=${1:?usage: install-llama-cpp.sh PYTHON | --print-cmake-args}

ARGS=$(cmake_args)
COMPILER=$( (cc --version 2>/dev/null || echo none) | head -n1)
KEY=$(printf '%s\n%s\n%s\n' "$VERSION" "$ARGS" "$COMPILER" | sha256sum | cut -c1-12)
CACHE=${LLM_GATEWAY_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-gateway/wheels}
DIR="$CACHE/llama-cpp-python-$VERSION-$KEY"
MARKER="$("$PY" -c 'import sys; print(sys.prefix)')/llama-cpp-build.txt"
WANT="llama-cpp-python $VERSION build $KEY: $ARGS"

if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$WANT" ] && "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "== llama-cpp-python $VERSION (build $KEY) is installed"
  exit 0
fi

if ! ls "$DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "== compiling llama-cpp-python $VERSION (about 6 minutes on 2 cores, once per CPU and flags)"
  echo "   CMAKE_ARGS=$ARGS"
  mkdir -p "$CACHE"
  tmp=$(mktemp -d "$CACHE/.build-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION"
  printf '%s\n' "$WANT" > "$tmp/BUILD.txt"
  rm -rf "$DIR"
  mv "$tmp" "$DIR"
  trap - EXIT
fi

WHEEL=$(ls "$DIR"/llama_cpp_python-*.whl | head -n1)
echo "== installing llama-cpp-python $VERSION (build $KEY)"
"$PY" -m pip install -q --no-cache-dir --no-deps --force-reinstall "$WHEEL"
"$PY" -m pip install -q "$WHEEL"  # its dependencies, without touching it again
INFO=$("$PY" -c "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())")
if [ -z "${LLAMA_CPP_CMAKE_ARGS:-}" ] && [[ "$INFO" == *"AMX_INT8 = 1"* ]]; then
  echo "error: the installed llama.cpp has the AMX kernels, which crash on Q4_K models: $INFO" >&2
  exit 1
fi
printf '%s\n' "$WANT" > "$MARKER"
echo "   $INFO"
