"""The engine channel alone: microseconds and CPU per streamed token, with no model in the way.

A stub engine in a real engine-side server (`host.EngineServer`, in a child
process) emits tokens as fast as it can, calling `after_step` after every
token as the serial engine does (the worst case: one wake-up per token; the
batched engine wakes once per step for all its sequences). The gateway side
is the real `client.EngineClient` over a real Unix socket. Prints, per token:
wall time at full speed, CPU time of the gateway side (what a worker spends to
receive a token), and CPU time of the engine side (the stub's thread and the
server's event loop together); then the CPU per token again at a decoding pace
(`--pace-ms` between a stream's tokens), where every token is a wake-up.

    python bench/engine_channel.py --tokens 20000 --reps 5 --streams 1 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.llamacpp import wire  # noqa: E402
from backends.llamacpp.client import EngineClient  # noqa: E402
from backends.llamacpp.sysinfo import cpu  # noqa: E402

SERVER = r'''
import asyncio, sys, threading, time
from backends.llamacpp.host import EngineServer
from backends.llamacpp.jobs import DONE, END, TEXT

class Stub:
    """Emits max_tokens pieces of text per choice, then DONE and END; no model. A job's
    sampling.top_k is the pause between tokens in ms (0: as fast as it can)."""
    depth = busy = load = completed = cancelled = tokens_generated = 0
    def __init__(self): self.after_step = lambda: None
    def retry_after(self): return 1.0
    def snapshot(self): return {"load": 0}
    def submit(self, job):
        def run():
            pause = job.sampling.top_k / 1000
            for i in range(job.max_tokens):
                if job.cancelled.is_set():
                    break
                if pause:
                    time.sleep(pause)
                job.post((TEXT, 0, " word"))
                self.after_step()
            job.post((DONE, 0, "length", job.max_tokens))
            job.post((END,))
            self.after_step()
        threading.Thread(target=run, daemon=True).start()

async def main(path):
    server = EngineServer(Stub(), {"pid": 0})
    await asyncio.start_unix_server(server.handle, path=path)
    print("listening", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1]))
'''


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def run(path: str, server_pid: int, streams: int, tokens: int, pace_ms: int = 0) -> tuple[float, float, float]:
    """(wall µs/token, gateway-side CPU µs/token, engine-side CPU µs/token) for `streams` concurrent jobs."""
    client = EngineClient("bench")
    await client.connect(path, 1)
    per = tokens // streams
    spec = wire.job_spec(prompt=[1], max_tokens=per, sampling={"top_k": pace_ms}, stop=[], n=1, grammar=None,
                         ignore_eos=True)

    async def one() -> int:
        handle = client.submit(spec)
        n = 0
        while True:
            ev = await handle.events.get()
            if ev[0] == wire.TEXT:
                n += 1
            elif ev[0] == wire.END:
                return n

    c0, s0, t0 = own_cpu_s(), cpu_s(server_pid), time.perf_counter()
    counts = await asyncio.gather(*(one() for _ in range(streams)))
    wall, c1, s1 = time.perf_counter() - t0, own_cpu_s(), cpu_s(server_pid)
    await client.close()
    n = sum(counts)
    assert n == per * streams, counts
    return wall / n * 1e6, (c1 - c0) / n * 1e6, (s1 - s0) / n * 1e6


async def in_process(streams: int, tokens: int, pace_ms: int) -> float:
    """CPU µs per token of the design before engine processes, for comparison: an engine thread in
    the gateway's process posting each token to the request's queue with `call_soon_threadsafe`."""
    loop = asyncio.get_running_loop()
    per = tokens // streams

    def engine(queue: asyncio.Queue) -> None:
        for _ in range(per):
            time.sleep(pace_ms / 1000)
            loop.call_soon_threadsafe(queue.put_nowait, (wire.TEXT, 0, " word"))
        loop.call_soon_threadsafe(queue.put_nowait, (wire.END,))

    async def one() -> int:
        queue: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=engine, args=(queue,), daemon=True).start()
        n = 0
        while (await queue.get())[0] != wire.END:
            n += 1
        return n

    c0 = own_cpu_s()
    n = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return (own_cpu_s() - c0) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=20000, help="tokens per run (split over the streams)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--pace-ms", type=int, default=20, help="pause between a stream's tokens in the paced runs")
    ap.add_argument("--paced-tokens", type=int, default=800)
    args = ap.parse_args()
    c = cpu()
    print(f"# {c['model']} ({c['arch']}; flags: {' '.join(c['flags'])}), Python {sys.version.split()[0]}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, medians of {args.reps} runs of {args.tokens} tokens")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "engine.sock")
        proc = subprocess.Popen([sys.executable, "-c", SERVER, path], cwd=ROOT, stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"listening"
            print("\n| streams | wall µs/token | gateway side CPU µs/token | engine side CPU µs/token (stub + loop) |"
                  "\n|---|---|---|---|")
            for streams in args.streams:
                await run(path, proc.pid, streams, 2000)  # warm
                rows = [await run(path, proc.pid, streams, args.tokens) for _ in range(args.reps)]
                wall, gw, eng = (statistics.median(r[i] for r in rows) for i in range(3))
                print(f"| {streams} | {wall:.1f} | {gw:.1f} | {eng:.1f} |", flush=True)
            # At a decoding pace (one token per `--pace-ms` per stream), every token is a wake-up of its own.
            print(f"\nat a pace of one token per {args.pace_ms} ms per stream ({args.paced_tokens} tokens a run):"
                  "\n\n| streams | gateway side CPU µs/token | engine side CPU µs/token (stub + loop) | both | "
                  "before: engine thread in the gateway's process, CPU µs/token |\n|---|---|---|---|---|")
            for streams in args.streams:
                rows = [await run(path, proc.pid, streams, args.paced_tokens, args.pace_ms) for _ in range(args.reps)]
                before = [await in_process(streams, args.paced_tokens, args.pace_ms) for _ in range(args.reps)]
                gw, eng = (statistics.median(r[i] for r in rows) for i in (1, 2))
                print(f"| {streams} | {gw:.1f} | {eng:.1f} | {gw + eng:.1f} | {statistics.median(before):.1f} |",
                      flush=True)
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    asyncio.run(main())
