"""What the engine process costs, and what the chosen llama.cpp build gains.

1. Continuous batching at 1, 2, 4 and 8 streams: the batched engine driven in
   this process (as the gateway did before engines had processes of their own)
   against the same engine in its engine process, driven through the backend
   the gateway uses (`LlamaCppBackend.completion_stream`: the channel, the
   client, the SSE frames). Runs alternate, medians of `--reps`.
2. The build against `use_extra_bufts=False` (safe mode: no repacked weights)
   on the same CPU: decode tokens/s at 1 and 8 streams, and prefill tokens/s
   (a long prompt's tokens over its time to first token, on an idle engine).

    python bench/engine_process.py --reps 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llamacpp_batching import PROMPTS, Probe  # noqa: E402  (bench/ is on the path: this script's folder)

from backends.base import CallContext  # noqa: E402
from backends.contract.protocol import CompletionRequest  # noqa: E402
from backends.llamacpp import wire  # noqa: E402
from backends.llamacpp.backend import LlamaCppBackend  # noqa: E402
from backends.llamacpp.batch import BatchEngine  # noqa: E402
from backends.llamacpp.jobs import EngineSettings, Job, Sampling  # noqa: E402
from backends.llamacpp.sysinfo import cpu, system_info  # noqa: E402
from backends.model_cards import load_cards  # noqa: E402
from backends.weights import resolve_weights  # noqa: E402
from routing.config import LlamaCppModelConfig  # noqa: E402

LONG = "Summarise these notes. " + " ".join(f"Note {i}: item {i} costs {i * 3} euros, ships in {i % 7} days."
                                            for i in range(70))


def in_process(engine: BatchEngine, prompts: list[list[int]], tokens: int) -> float:
    """Aggregate tokens/s of len(prompts) greedy streams on an engine in this process."""
    t0 = time.perf_counter()
    probes = []
    for ids in prompts:
        probe = Probe()
        engine.submit(Job(prompt_tokens=ids, max_tokens=tokens, sampling=Sampling(temperature=0.0), stop=[],
                          ignore_eos=True, post=probe))
        probes.append(probe)
    for p in probes:
        p.done.wait(600)
    return len(prompts) * tokens / (time.perf_counter() - t0)


async def raw_events(backend: LlamaCppBackend, prompts: list[list[int]], tokens: int) -> float:
    """The same through the engine process, reading its events as they arrive (the channel alone)."""
    async def one(ids: list[int]) -> None:
        spec = wire.job_spec(prompt=ids, max_tokens=tokens, sampling={"temperature": 0.0}, stop=[], n=1,
                             grammar=None, ignore_eos=True)
        handle, ev = await backend.engines.open(spec, time.monotonic() + 600)  # type: ignore[union-attr]
        while ev[0] != wire.END:
            assert ev[0] in (wire.TEXT, wire.DONE), ev
            ev = await handle.events.get()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(ids) for ids in prompts))
    return len(prompts) * tokens / (time.perf_counter() - t0)


async def through_process(backend: LlamaCppBackend, prompts: list[list[int]], tokens: int) -> float:
    """The same through the engine process, as the gateway's request path drives it (SSE frames)."""
    async def one(ids: list[int]) -> None:
        request = CompletionRequest.model_validate({"model": "m", "prompt": ids, "max_tokens": tokens,
                                                    "temperature": 0, "ignore_eos": True, "stream": True})
        async for _ in await backend.completion_stream(request, CallContext()):
            pass

    t0 = time.perf_counter()
    await asyncio.gather(*(one(ids) for ids in prompts))
    return len(prompts) * tokens / (time.perf_counter() - t0)


def start(path: str, args: argparse.Namespace, **kw: Any) -> BatchEngine:
    engine = BatchEngine(EngineSettings(model_path=path, n_ctx=args.n_ctx, n_threads=args.threads, max_queue=64,
                                        parallel=8, **kw), name="bench")
    engine.start()
    engine._loaded.wait()
    if engine.load_error:
        raise engine.load_error
    return engine


def prefill_tps(engine: BatchEngine, ids: list[int]) -> float:
    probe = Probe()
    engine.submit(Job(prompt_tokens=ids, max_tokens=1, sampling=Sampling(temperature=0.0), stop=[],
                      ignore_eos=True, post=probe))
    probe.done.wait(600)
    assert probe.first is not None
    return len(ids) / probe.first


def med(xs: list[float]) -> float:
    return statistics.median(xs)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=4096)
    args = ap.parse_args()
    card = load_cards()[args.model]
    path = str(resolve_weights(card))
    info = system_info()
    c = cpu()
    print(f"# {args.model}, {args.threads} threads, {c['model']} ({c['arch']}; flags: {' '.join(c['flags'])}), "
          f"llama.cpp features: {' '.join(info['llama_cpp']['features'])}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"medians of {args.reps}", flush=True)

    engine = start(path, args)
    prompts = [engine.llm.tokenize(p.encode(), add_bos=True, special=True) for p in PROMPTS]
    backend = LlamaCppBackend(args.model, card, LlamaCppModelConfig(card=args.model, n_ctx=args.n_ctx,
                                                                    n_threads=args.threads, parallel=8,
                                                                    max_queue=64))
    await backend.start()
    assert backend.status().state == "ready", backend.status()
    runs: dict[int, tuple[list[float], list[float], list[float]]] = {}
    for b in (1, 2, 4, 8):
        ins, raws, outs = [], [], []
        in_process(engine, prompts[:b], 8)  # warm this batch shape on both sides
        await through_process(backend, prompts[:b], 8)
        for _ in range(args.reps):
            ins.append(in_process(engine, prompts[:b], args.tokens))
            raws.append(await raw_events(backend, prompts[:b], args.tokens))
            outs.append(await through_process(backend, prompts[:b], args.tokens))
        runs[b] = (ins, raws, outs)
    await backend.aclose()
    print("\n| streams | in-process tok/s | engine process, events tok/s | ratio | engine process, SSE frames "
          "tok/s | ratio |\n|---|---|---|---|---|---|")
    for b, (ins, raws, outs) in runs.items():
        print(f"| {b} | {med(ins):.1f} | {med(raws):.1f} | **{med(raws) / med(ins):.3f}** | {med(outs):.1f} | "
              f"**{med(outs) / med(ins):.3f}** |", flush=True)
    print("\nper run (in-process/events/frames): " + "; ".join(
        f"{b} streams " + ", ".join(f"{i:.0f}/{r:.0f}/{o:.0f}" for i, r, o in zip(*cols)) for b, cols in runs.items()))

    long_ids = engine.llm.tokenize(LONG.encode(), add_bos=True, special=True)
    engine.stop()
    # Both builds of the weights loaded side by side, runs alternating, so drift hits both alike.
    engines = {extra: start(path, args, use_extra_bufts=extra) for extra in (True, False)}
    rows: dict[bool, tuple[list[float], list[float], list[float]]] = {True: ([], [], []), False: ([], [], [])}
    for e in engines.values():
        in_process(e, prompts[:8], 8)
    for _ in range(args.reps):
        for extra, e in engines.items():
            rows[extra][0].append(in_process(e, prompts[:1], args.tokens))
            rows[extra][1].append(in_process(e, prompts[:8], args.tokens))
            rows[extra][2].append(prefill_tps(e, long_ids))
    for e in engines.values():
        e.stop()
    print(f"\n| weights | decode tok/s, 1 stream | decode tok/s, 8 streams | prefill tok/s ({len(long_ids)}-token "
          f"prompt) |\n|---|---|---|---|")
    meds = {extra: tuple(med(col) for col in cols) for extra, cols in rows.items()}
    for extra, name in ((True, "extra buffer types on (the build's default)"),
                        (False, "`use_extra_bufts=False` (safe mode)")):
        one, eight, pre = meds[extra]
        print(f"| {name} | {one:.1f} | {eight:.1f} | {pre:.0f} |")
    on, off = meds[True], meds[False]
    print(f"| on / off | **{on[0] / off[0]:.2f}** | **{on[1] / off[1]:.2f}** | **{on[2] / off[2]:.2f}** |")
    print("\nper run (on/off): 1 stream " + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rows[True][0], rows[False][0]))
          + "; 8 streams " + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rows[True][1], rows[False][1]))
          + "; prefill " + ", ".join(f"{a:.0f}/{b:.0f}" for a, b in zip(rows[True][2], rows[False][2])))


if __name__ == "__main__":
    asyncio.run(main())
