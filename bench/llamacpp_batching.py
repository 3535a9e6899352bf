"""Continuous batching of the in-process llama.cpp engine: throughput, TTFT under load, prefix reuse.

Drives the engine the backend uses (`BatchEngine`, same settings as a
`parallel: 8` deployment) and prints a markdown table of medians:

- aggregate generated tokens/s with 1, 2, 4 and 8 concurrent streams (greedy,
  EOS ignored, so every stream makes exactly `--tokens`), as ratios to 1 stream,
  with the median time of one decode step and the share of the wall time spent
  inside `llama_decode` (what is left is the scheduler, sampling and detokenizing);
- time to first token of a request that arrives while others decode, against
  the same request on an idle model;
- time to first token with and without prefix reuse, for requests that share a
  long system prompt.

    python bench/llamacpp_batching.py            # Gemma 3 270M Q4_K_M, 2 threads
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.llamacpp.batch import BatchEngine  # noqa: E402
from backends.llamacpp.jobs import END, ERROR, TEXT, EngineSettings, Job, Sampling  # noqa: E402
from backends.llamacpp.serial import LlamaEngine  # noqa: E402
from backends.model_cards import load_cards  # noqa: E402
from backends.weights import resolve_weights  # noqa: E402

PROMPTS = ["Once upon a time, in a small village by the sea,", "The history of the Roman empire begins",
           "Write a recipe for a chocolate cake:", "The three laws of thermodynamics are",
           "Dear diary, today I went to the market and", "A short poem about the autumn wind:",
           "The best way to learn a new language is", "In the year 2150, humanity finally"]
SYSTEM = ("You are a meticulous support assistant for a large online bookshop. " +
          " ".join(f"Policy {i}: orders of category {i} ship within {i % 5 + 1} days and may be returned "
                   f"within {10 + i} days if unopened." for i in range(40)))
QUESTIONS = ["When does my order of category 7 arrive?", "Can I return an opened book?",
             "How long do I have to return category 12?", "Do you ship abroad?", "What is policy 3?"]


class Probe:
    """Times one job: submit to first text, submit to end."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.done = threading.Event()
        self.tokens = 0

    def __call__(self, ev: tuple) -> None:
        if ev[0] == TEXT and self.first is None:
            self.first = time.perf_counter() - self.t0
        elif ev[0] in (END, ERROR):
            self.done.set()


def submit(engine: Any, text: str, tokens: int) -> tuple[Job, Probe]:
    ids = engine.llm.tokenize(text.encode(), add_bos=True, special=True)
    probe = Probe()
    job = Job(prompt_tokens=ids, max_tokens=tokens, sampling=Sampling(temperature=0.0), stop=[], ignore_eos=True,
              post=probe)
    probe.t0 = time.perf_counter()
    engine.submit(job)
    return job, probe


class DecodeTimer:
    """Times every `llama_decode` call by the batch's token count, to tell the kernel's cost from ours."""

    def __init__(self) -> None:
        import llama_cpp

        self._module = llama_cpp
        self._decode = llama_cpp.llama_decode
        self.calls: list[tuple[int, float]] = []

    def __enter__(self) -> DecodeTimer:
        self._module.llama_decode = self._timed  # the engines look it up on the module at each step
        return self

    def __exit__(self, *exc: object) -> None:
        self._module.llama_decode = self._decode

    def _timed(self, ctx: Any, batch: Any) -> int:
        t0 = time.perf_counter()
        rc = self._decode(ctx, batch)
        self.calls.append((batch.n_tokens, time.perf_counter() - t0))
        return rc


def throughput(engine: Any, streams: int, tokens: int) -> tuple[float, float, float]:
    """(aggregate tokens/s, median ms of a decode step of `streams` rows, share of wall time in llama_decode)."""
    with DecodeTimer() as timer:
        t0 = time.perf_counter()
        probes = [submit(engine, PROMPTS[i % len(PROMPTS)], tokens)[1] for i in range(streams)]
        for p in probes:
            p.done.wait(600)
        wall = time.perf_counter() - t0
    steps = [d for n, d in timer.calls if n == streams] or [0.0]
    return streams * tokens / wall, statistics.median(steps) * 1000, sum(d for _, d in timer.calls) / wall


def ttft_under_load(engine: Any, others: int, prompt: str) -> tuple[float, float]:
    """(idle TTFT, TTFT while `others` streams decode) of the same request."""
    _, idle = submit(engine, prompt, 4)
    idle.done.wait(60)
    background = [submit(engine, PROMPTS[i % len(PROMPTS)], 100_000) for i in range(others)]
    while any(p.first is None for _, p in background):
        time.sleep(0.005)
    time.sleep(0.05)  # well into decoding
    _, busy = submit(engine, prompt, 4)
    busy.done.wait(60)
    for job, p in background:
        job.cancelled.set()
        p.done.wait(60)
    assert idle.first is not None and busy.first is not None
    return idle.first, busy.first


def prefix_ttft(engine: Any, i: int) -> float:
    """TTFT of a question behind the shared system prompt, right after a different question behind it."""
    _, warm = submit(engine, f"{SYSTEM}\nQ: {QUESTIONS[i % len(QUESTIONS)]}\nA:", 8)
    warm.done.wait(60)
    _, probe = submit(engine, f"{SYSTEM}\nQ: {QUESTIONS[(i + 1) % len(QUESTIONS)]}\nA:", 4)
    probe.done.wait(60)
    assert probe.first is not None
    return probe.first


def start(cls: type, path: str, args: argparse.Namespace, **kw: Any) -> Any:
    settings = EngineSettings(model_path=path, n_ctx=args.n_ctx, n_threads=args.threads, max_queue=64,
                              prefill_chunk=args.chunk, **kw)
    engine = cls(settings, name="bench")
    engine.start()
    engine._loaded.wait()
    if engine.load_error:
        raise engine.load_error
    return engine


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream in the throughput runs")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=128, help="prefill tokens per step while others decode")
    args = ap.parse_args()
    path = str(resolve_weights(load_cards()[args.model]))
    print(f"# {args.model}, {args.threads} threads, {platform.machine()} {platform.processor() or ''}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, medians of {args.reps}", flush=True)

    serial = start(LlamaEngine, path, args)
    serial_tps = med([throughput(serial, 1, args.tokens)[0] for _ in range(args.reps)])
    serial.stop()

    engine = start(BatchEngine, path, args, parallel=args.parallel)
    rows = []
    runs: dict[int, list[tuple[float, float, float]]] = {}
    for b in (1, 2, 4, 8):
        if b > args.parallel:
            continue
        runs[b] = [throughput(engine, b, args.tokens) for _ in range(args.reps)]
    tps = {b: med([r[0] for r in rs]) for b, rs in runs.items()}
    print("\n| streams | aggregate tok/s | × 1 stream | decode step ms | × 1-row step | wall time in llama_decode |"
          "\n|---|---|---|---|---|---|")
    print(f"| 1, serial engine (`parallel: 1`) | {serial_tps:.1f} | {serial_tps / tps[1]:.2f} | | | |")
    step1 = med([r[1] for r in runs[1]])
    for b, rs in runs.items():
        step = med([r[1] for r in rs])
        print(f"| {b} | {tps[b]:.1f} | **{tps[b] / tps[1]:.2f}** | {step:.1f} | {step / step1:.2f} | "
              f"{med([r[2] for r in rs]):.1%} |")

    short = "Tell me one fact about the moon."
    long_prompt = "Summarise the following notes. " + " ".join(f"Note {i}: item {i} costs {i * 3} euros."
                                                               for i in range(60))
    print("\n| arriving request | others decoding | idle TTFT ms | TTFT under load ms | × idle |\n|---|---|---|---|---|")
    for name, prompt in (("short prompt", short), ("long prompt", long_prompt)):
        n_tok = len(engine.llm.tokenize(prompt.encode(), add_bos=True, special=True))
        for others in (3, 7):
            if others >= args.parallel:
                continue
            pairs = [ttft_under_load(engine, others, prompt) for _ in range(args.reps)]
            idle, busy = med([p[0] for p in pairs]) * 1000, med([p[1] for p in pairs]) * 1000
            rows.append((name, n_tok, others, idle, busy))
            print(f"| {name} ({n_tok} tokens) | {others} | {idle:.1f} | {busy:.1f} | **{busy / idle:.2f}** |",
                  flush=True)
    engine.stop()

    n_sys = len(serial.llm.tokenize(SYSTEM.encode(), add_bos=True, special=True))
    print(f"\n| prefix reuse (system prompt of {n_sys} tokens) | TTFT ms | reused tokens/request |\n|---|---|---|")
    for reuse in (False, True):
        engine = start(BatchEngine, path, args, parallel=args.parallel, reuse_prompt_prefix=reuse)
        times = [prefix_ttft(engine, i) for i in range(args.reps)]
        reused = engine.prefix_tokens_reused / (2 * args.reps)
        engine.stop()
        print(f"| {'on' if reuse else 'off'} | {med(times) * 1000:.1f} | {reused:.0f} |", flush=True)


if __name__ == "__main__":
    main()
