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


# llama.cpp warnings that report nothing wrong with the models and settings this gateway serves, each for a
# reason; they go to the log at INFO, so that a warning in it means something. Anything else stays a warning.
_BENIGN = (
    # n_ctx is capped at the card's context_length (a GGUF without one says 0; an embedding engine's context
    # holds several inputs, each refused beyond the model's own limit before it reaches the engine).
    re.compile(r"n_ctx_seq \(\d+\) > n_ctx_train \(\d+\)"),
    # Gemma's tokenizer metadata marks some control tokens as normal ones; llama.cpp corrects their type itself.
    re.compile(r"control-looking token: .* was not control-type"),
    # A sliding-window model's cache kept at full size: more memory, the same output.
    re.compile(r"using full-size SWA cache"),
)


def log_level_for(level: int, line: str) -> int | None:
    """The level a llama.cpp log line gets in our log: None for its info and debug chatter (and blank lines),
    INFO for a known-benign warning, else WARNING or ERROR as llama.cpp said."""
    line = line.strip()
    if level not in (3, 4) or not line:  # GGML_LOG_LEVEL_WARN, _ERROR (ggml.h)
        return None
    if level == 3 and any(p.search(line) for p in _BENIGN):
        return logging.INFO
    return logging.WARNING if level == 3 else logging.ERROR


def relay(level: int, line: str) -> None:
    """Pass one llama.cpp log line on to our log, at the level `log_level_for` gives it."""
    ours = log_level_for(level, line)
    if ours is not None:
        log.log(ours, "llama.cpp: %s", line.strip())


_relay_callback: Any = None  # the ctypes thunk, alive as long as llama.cpp may call it


def relay_llama_log() -> None:
    """Send this process's llama.cpp log through `relay` (once): the gateway process loads tokenizers
    (vocab only), and `verbose=False` leaves some of llama.cpp's lines on stderr, outside our log's format."""
    global _relay_callback
    if _relay_callback is not None:
        return
    import llama_cpp

    @llama_cpp.llama_log_callback
    def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        relay(level, text.decode("utf-8", errors="replace"))

    _relay_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


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
            relay(level, line)

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
