"""What llama.cpp found on this machine and what it chose: CPU features, and where the weights went.

A slow or crashing engine is diagnosed from the outside with this: the CPU's
model and flags, the features the llama.cpp build uses (`AVX2`, `AVX512`,
`AMX_INT8`, `REPACK`...), and the buffer types that hold the model's weights
(`CPU_REPACK` means weights repacked for the wide matrix kernels, `AMX` the
AMX tiles; both are *extra buffer types*, which safe mode turns off). The
engine process reports it at start-up; `/ready` and the log show it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
import re
from typing import Any, Iterator

log = logging.getLogger("llm_gateway.llamacpp")

# CPU flags worth showing: the ones ggml's x86 and Arm kernels are built around.
_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512vbmi", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve", "sve2")
_BUFFER = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")


def cpu() -> dict[str, Any]:
    """The CPU's model name and its relevant flags, from /proc/cpuinfo (empty where there is none)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and value.strip():
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags = set(value.split())
                if model and flags and key == "":
                    break  # the first processor's block is enough
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "flags": [f for f in _CPU_FLAGS if f in flags]}


def build_features() -> list[str]:
    """Features of the llama.cpp build that are on (`llama_print_system_info`), e.g. AVX2, REPACK."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")
    on: list[str] = []
    for part in raw.split("|"):
        name, _, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if name and value.strip() == "1":
            on.append(name)
    return on


def system_info() -> dict[str, Any]:
    import llama_cpp

    return {"cpu": cpu(), "llama_cpp": {"version": llama_cpp.__version__, "features": build_features()}}


class LoadLog:
    """Captures llama.cpp's log while a model loads, to learn which buffer types hold its weights.

    llama.cpp logs through one process-wide callback; `Llama(verbose=False)` only hides the lines.
    Warnings and errors are passed on to our log; everything else is kept (bounded) and parsed.
    """

    def __init__(self) -> None:
        import llama_cpp

        self.lines: list[str] = []

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            line = text.decode("utf-8", errors="replace")
            if len(self.lines) < 2000:
                self.lines.append(line)
            if level in (3, 4) and line.strip():  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h)
                log.warning("llama.cpp: %s", line.strip())

        self._callback = callback  # keep the ctypes thunk alive as long as llama.cpp may call it
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))

    def weight_buffers(self) -> dict[str, float]:
        """MiB of weights per buffer type, e.g. {"CPU_Mapped": 235.2, "CPU_REPACK": 12.7}."""
        out: dict[str, float] = {}
        for line in self.lines:
            m = _BUFFER.search(line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
        return out


@contextlib.contextmanager
def extra_bufts(enabled: bool) -> Iterator[None]:
    """Build high-level `Llama` objects with or without extra buffer types.

    `Llama` takes its model parameters from `llama_model_default_params()` inside its constructor and
    has no argument for `use_extra_bufts`, so the default is patched for the duration of the load.
    Only the engine process does this, on its one loading thread.
    """
    if enabled:
        yield
        return
    from llama_cpp import llama_cpp as lib

    original = lib.llama_model_default_params

    def without() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = without
    try:
        yield
    finally:
        lib.llama_model_default_params = original


def model_params(use_extra_bufts: bool) -> Any:
    """Low-level model parameters for the batched engine."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = use_extra_bufts
    return params
