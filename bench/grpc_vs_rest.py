#!/usr/bin/env python3
"""REST or gRPC? The gateway's chat completions over HTTP/JSON and over gRPC/protobuf, measured in one run.

One gateway process (`llm-gateway serve`, gRPC enabled, pinned to core 0) in front of the shared harness's
fake upstream (nginx answering from memory on core 1; ../shared/bench/make_upstream_conf.py), the same
routes (`fake-model` for JSON, `fake-model-stream` for SSE) and the same payloads for both APIs. The clients
run in this process, on core 1: REST with aiohttp (one shared session, raw bytes, orjson), gRPC with grpc.aio
(one channel, the generated stubs). Cases: non-streaming and streaming, 1 and 32 concurrent callers, a small
request and one with a ~16 KB prompt. Each cell runs REST and gRPC back to back (order flipped every
repetition) after a warm-up; the report gives medians over the repetitions and the ratios gRPC/REST.
Then the serialisation alone (bench/grpc_vs_rest_codec.py): µs per request for JSON and protobuf.

    python bench/grpc_vs_rest.py                                   # 3 x 5 s per cell, about 7 minutes
    python bench/grpc_vs_rest.py --duration 0.3 --repeats 1 --warmup 0 --first-warmup 0.1 --micro-repeats 1 \
        --micro-min-s 0.002                                        # smoke run, about 15 s
    python bench/grpc_vs_rest.py --lock /tmp/bench.lock --out bench/published/DATE/grpc-vs-rest.md

Needs nginx (the harness installs it with apt-get; without it this falls back to
bench/fake_upstream_aiohttp.py, slower, and says so in the report), taskset, the stubs
(gateway.grpc_api.codegen.load() makes them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KEY = "sk-bench-master-key"
AUTH_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
GRPC_METADATA = (("authorization", f"Bearer {KEY}"),)
MODELS = {"unary": "fake-model", "stream": "fake-model-stream"}
SYSTEM = "You are a helpful assistant."
QUESTION = "Say hello to the benchmark in one short sentence."
FILLER = "The gateway routes each request to a deployment, retries on another when one fails, and streams back. "
PROTOCOLS = ("rest", "grpc")
Call = Callable[[], Awaitable[tuple[float | None, int]]]  # one call: (its first content chunk's time, chunks)


# ------------------------------------------------------------------ payloads --------------------------------------

def request_dicts(mode: str, prompt_bytes: int) -> dict[str, dict[str, Any]]:
    """The two OpenAI request bodies of a mode: a short chat, and one whose user prompt is `prompt_bytes` long."""
    long_prompt = ("Summarise these notes. " + FILLER * (prompt_bytes // len(FILLER) + 1))[:prompt_bytes]
    out = {}
    for size, prompt in (("small", QUESTION), ("large", long_prompt)):
        body: dict[str, Any] = {"model": MODELS[mode],
                                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                                "max_tokens": 32, "temperature": 0}
        if mode == "stream":
            body["stream"] = True
        out[size] = body
    return out


def grpc_request(pb2: Any, body: dict[str, Any]) -> Any:
    """The same request as a protobuf message (`stream` is the RPC's, not a field a client sets)."""
    from google.protobuf import json_format

    return json_format.ParseDict({k: v for k, v in body.items() if k != "stream"}, pb2.ChatCompletionRequest())


def harness_conf(harness: Path | None = None) -> Any:
    from bench.fake_upstream_aiohttp import harness_module

    return harness_module(harness or Path(os.environ.get("BENCH_HARNESS", ROOT.parent / "shared" / "bench")))


def fake_bodies(harness: Path | None = None) -> tuple[bytes, bytes]:
    """The fake upstream's chat.completion body and one of its content chunks, as nginx serves them."""
    conf = harness_conf(harness)
    resp = orjson.dumps(conf.chat_completion())
    frames = [f[len("data: "):] for f in conf.sse_stream().split("\n\n") if f.startswith("data: {")]
    return resp, frames[1].encode()


# ------------------------------------------------------------------ processes -------------------------------------

def http_status(url: str, timeout: float = 2.0) -> int:
    from bench.memory_soak import status  # the harness's one "what does this URL answer" (0: nothing)

    return status(url, timeout)


@dataclass
class Started:
    """A process this script started in its own session (stopped by its process group id)."""
    proc: subprocess.Popen[bytes]
    name: str
    log: Path

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def start(name: str, cmd: list[str], cpus: str, tmp: Path, env: dict[str, str] | None = None) -> Started:
    log = tmp / f"{name}.log"
    proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return Started(proc, name, log)


def wait_for(what: str, ok: Callable[[], bool], started: Started | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if started is not None and started.proc.poll() is not None:
            raise SystemExit(f"{what} exited ({started.proc.returncode}); log {started.log}:\n"
                             f"{started.log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def ensure_upstream(args: argparse.Namespace, tmp: Path) -> tuple[Started | None, str]:
    """(the upstream started here, or None when one already answers; a sentence saying which it is)."""
    port = args.upstream_port
    models = f"http://127.0.0.1:{port}/v1/models"
    if http_status(models) == 200:
        return None, f"a fake upstream already answering on 127.0.0.1:{port} (assumed to be the harness's nginx; reused)"
    harness = Path(args.harness)
    if args.upstream in ("auto", "nginx") and shutil.which("nginx"):
        conf = subprocess.run([sys.executable, str(harness / "make_upstream_conf.py"), str(port), str(tmp)],
                              check=True, capture_output=True, text=True).stdout
        (tmp / "nginx.conf").write_text(conf)
        note = (f"the shared harness's nginx fake upstream (make_upstream_conf.py; {nginx_version()}, 1 worker) "
                f"started here on 127.0.0.1:{port}, core(s) {args.load_cpus}")
        up = start("upstream-nginx", ["nginx", "-c", str(tmp / "nginx.conf"), "-p", f"{tmp}/"], args.load_cpus, tmp)
    elif args.upstream == "nginx":
        raise SystemExit("nginx is not installed (apt-get install -y nginx, as the harness does)")
    else:
        up = start("upstream-aiohttp", [sys.executable, str(ROOT / "bench" / "fake_upstream_aiohttp.py"), str(port),
                                        str(harness)], args.load_cpus, tmp)
        why = "--upstream aiohttp" if args.upstream == "aiohttp" else "nginx is not installed"
        note = (f"**FALLBACK: bench/fake_upstream_aiohttp.py** ({why}): an aiohttp process on the "
                f"load core(s) {args.load_cpus}, far slower than nginx, so the load core is busier and absolute "
                "figures are lower than with nginx; the ratios still compare the two APIs on the same upstream")
    try:
        wait_for("the fake upstream", lambda: http_status(models) == 200, up, timeout=20)
    except BaseException:
        up.stop()
        raise
    return up, note


def gateway_config(args: argparse.Namespace) -> str:
    up = f"http://127.0.0.1:{args.upstream_port}"
    return f"""# bench/grpc_vs_rest.py: one gateway, REST on --port, gRPC on --grpc-port, the harness's fake upstream
server:
  log_level: warning
  watch_config: false
  grpc: {{enabled: true, port: {args.grpc_port}}}
providers:
  fake: {{kind: openai, base_url: "{up}/v1", api_key: "${{BENCH_UPSTREAM_KEY}}"}}
  fake-stream: {{kind: openai, base_url: "{up}/stream/v1", api_key: "${{BENCH_UPSTREAM_KEY}}"}}
deployments:
  - {{name: fake-a, provider: fake, model: fake-model}}
  - {{name: fake-stream, provider: fake-stream, model: fake-model-stream}}
routes:
  # No cache (on by default for greedy requests like these): every call goes to the upstream.
  - {{name: fake-model, deployments: [fake-a], cache: {{enabled: false}}}}
  - {{name: fake-model-stream, deployments: [fake-stream], cache: {{enabled: false}}}}
health_checks: {{interval_s: 30}}
"""


def gateway_command(python: str) -> list[str]:
    cli = Path(python).parent / "llm-gateway"
    return [str(cli)] if cli.exists() else [python, "-m", "gateway"]


def start_gateway(args: argparse.Namespace, tmp: Path) -> Started:
    cfg = tmp / "gateway.yaml"
    cfg.write_text(gateway_config(args))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # in-memory stores: no Redis in the way
    env.update(PYTHONPATH=str(ROOT), LLM_GATEWAY_MASTER_KEY=KEY, BENCH_UPSTREAM_KEY="sk-upstream-unused",
               PYTHONUNBUFFERED="1")
    gw = start("gateway", [*gateway_command(args.python), "serve", "--config", str(cfg), "--port", str(args.port)],
               args.gw_cpus, tmp, env)
    try:
        wait_for("the gateway", lambda: http_status(f"http://127.0.0.1:{args.port}/ready") == 200, gw)
    except BaseException:
        gw.stop()
        raise
    return gw


def process_tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all their threads: grpc's C core included)."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ clients ---------------------------------------

class CallFailed(Exception):
    pass


class RestClient:
    """aiohttp, one session for the whole run, the body sent as prepared bytes, answers parsed with orjson."""

    def __init__(self, session: Any, url: str) -> None:
        self.session, self.url = session, url

    async def unary(self, body: bytes) -> tuple[float | None, int]:
        async with self.session.post(self.url, data=body, headers=AUTH_HEADERS) as r:
            raw = await r.read()
            if r.status != 200:
                raise CallFailed(f"HTTP {r.status}: {raw[:200]!r}")
        if not orjson.loads(raw)["choices"][0]["message"]["content"]:
            raise CallFailed("no content")
        return None, 1

    async def stream(self, body: bytes) -> tuple[float | None, int]:
        """The stream read to its end, every event parsed: (when its first content chunk arrived, chunks)."""
        first, done, buf, chunks = None, False, b"", 0
        async with self.session.post(self.url, data=body, headers=AUTH_HEADERS) as r:
            if r.status != 200:
                raise CallFailed(f"HTTP {r.status}: {(await r.read())[:200]!r}")
            async for piece in r.content.iter_any():
                buf += piece
                while (end := buf.find(b"\n\n")) >= 0:
                    frame, buf = buf[:end], buf[end + 2:]
                    if not frame.startswith(b"data: "):
                        continue
                    if frame == b"data: [DONE]":
                        done = True
                        continue
                    choices = orjson.loads(frame[6:]).get("choices")
                    chunks += 1
                    if first is None and choices and choices[0]["delta"].get("content"):
                        first = time.perf_counter()
        if first is None or not done:
            raise CallFailed("stream without content or [DONE]")
        return first, chunks


class GrpcClient:
    """grpc.aio, one channel for the whole run (HTTP/2: every caller's call multiplexed on it), the stubs."""

    def __init__(self, stub: Any) -> None:
        self.stub = stub

    async def unary(self, msg: Any) -> tuple[float | None, int]:
        reply = await self.stub.CreateChatCompletion(msg, metadata=GRPC_METADATA, timeout=30)
        if not reply.choices[0].message.content:
            raise CallFailed("no content")
        return None, 1

    async def stream(self, msg: Any) -> tuple[float | None, int]:
        first, chunks = None, 0
        async for chunk in self.stub.StreamChatCompletion(msg, metadata=GRPC_METADATA, timeout=30):
            chunks += 1
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        if first is None:
            raise CallFailed("stream without content")
        return first, chunks


# ------------------------------------------------------------------ load ------------------------------------------

@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    requests: int
    errors: int
    gw_cpu_us: float  # gateway CPU per request
    client_cpu_us: float  # this process's CPU per request (the client; also nginx's core, not counted)
    gw_busy: float  # gateway CPU / wall, share of one core
    client_busy: float
    chunks: float  # messages received per call (1 for non-streaming calls)
    first_error: str = ""


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))] * 1000 if s else float("nan")


@dataclass
class Run:
    """What the callers of one drive saw."""
    lat: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    chunks: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


async def drive(call: Call, conc: int, seconds: float) -> Run:
    """`conc` callers, each calling back to back until the deadline."""
    run = Run()
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                first, chunks = await call()
            except Exception as exc:
                run.errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                if len(run.errors) > 1000 and not run.lat:
                    raise SystemExit(f"every call fails: {run.errors[0]}") from None
                continue
            run.lat.append(time.perf_counter() - t0)
            run.chunks += chunks
            if first is not None:
                run.ttft.append(first - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(conc)))
    run.wall = time.perf_counter() - t0
    return run


async def measure(call: Call, conc: int, seconds: float, warmup: float, gw_pid: int) -> Sample:
    if warmup > 0:
        await drive(call, conc, warmup)
    gw0, me0 = cpu_seconds(gw_pid), time.process_time()
    r = await drive(call, conc, seconds)
    gw, me, n = cpu_seconds(gw_pid) - gw0, time.process_time() - me0, max(1, len(r.lat))
    return Sample(len(r.lat) / r.wall, pct(r.lat, 50), pct(r.lat, 99), pct(r.ttft, 50) if r.ttft else None,
                  len(r.lat), len(r.errors), gw / n * 1e6, me / n * 1e6, gw / r.wall, me / r.wall, r.chunks / n,
                  r.errors[0] if r.errors else "")


@dataclass
class Cell:
    mode: str
    size: str
    conc: int

    @property
    def key(self) -> tuple[str, str, int]:
        return self.mode, self.size, self.conc


@dataclass
class Bench:
    """The clients and the payloads of both APIs, built once inside the event loop."""
    rest: RestClient
    grpc: GrpcClient
    bodies: dict[tuple[str, str], bytes] = field(default_factory=dict)
    messages: dict[tuple[str, str], Any] = field(default_factory=dict)

    def call(self, proto: str, mode: str, size: str) -> Call:
        if proto == "rest":
            fn, arg = getattr(self.rest, mode), self.bodies[mode, size]
        else:
            fn, arg = getattr(self.grpc, mode), self.messages[mode, size]
        return lambda: fn(arg)


@contextlib.asynccontextmanager
async def clients(args: argparse.Namespace, pb2: Any, pb2_grpc: Any, port: int, grpc_port: int,
                  conns: int) -> Any:
    import aiohttp
    import grpc

    connector = aiohttp.TCPConnector(limit=conns, limit_per_host=conns)
    async with aiohttp.ClientSession(connector=connector) as session, \
            grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
        bench = Bench(RestClient(session, f"http://127.0.0.1:{port}/v1/chat/completions"),
                      GrpcClient(pb2_grpc.ChatServiceStub(channel)))
        for mode in args.modes:
            for size, body in request_dicts(mode, args.prompt_bytes).items():
                bench.bodies[mode, size] = orjson.dumps(body)
                bench.messages[mode, size] = grpc_request(pb2, body)
        yield bench


async def run_matrix(args: argparse.Namespace, pb2: Any, pb2_grpc: Any, gw_pid: int,
                     log: Callable[[str], None]) -> dict[tuple[str, str, int, str], list[Sample]]:
    cells = [Cell(m, s, c) for m in args.modes for s in args.sizes for c in args.concurrency]
    results: dict[tuple[str, str, int, str], list[Sample]] = {}
    async with clients(args, pb2, pb2_grpc, args.port, args.grpc_port, max(args.concurrency)) as bench:
        for mode in args.modes:  # every path answers and is warm before anything is recorded
            for proto in PROTOCOLS:
                await drive(bench.call(proto, mode, "small"), max(args.concurrency), args.first_warmup)
        for rep in range(1, args.repeats + 1):
            order = PROTOCOLS if rep % 2 else PROTOCOLS[::-1]
            for cell in cells:
                for proto in order:
                    s = await measure(bench.call(proto, cell.mode, cell.size), cell.conc, args.duration,
                                      args.warmup, gw_pid)
                    results.setdefault((*cell.key, proto), []).append(s)
                    log(f"rep {rep} {cell.mode:>6} {cell.size:>5} c={cell.conc:<3} {proto:>4}: {s.rps:8.1f} req/s  "
                        f"p50 {s.p50_ms:7.2f} ms  p99 {s.p99_ms:7.2f} ms"
                        + (f"  ttft p50 {s.ttft_p50_ms:6.2f} ms" if s.ttft_p50_ms is not None else "")
                        + f"  gw {s.gw_cpu_us:6.0f} µs/req ({s.gw_busy:.0%})  client {s.client_cpu_us:5.0f} µs/req"
                        + f" ({s.client_busy:.0%})" + (f"  ERRORS {s.errors}: {s.first_error}" if s.errors else ""))
    return results


# ------------------------------------------------------------------ bytes on the wire -----------------------------

class CountingRelay:
    """A TCP relay on loopback that counts the bytes each way: what the APIs put on the wire (TCP payload:
    HTTP/1.1 head and body, chunked framing; HTTP/2 frames, HPACK headers, gRPC's length prefix, pings)."""

    def __init__(self, port: int) -> None:
        self.target, self.up, self.down, self.server = port, 0, 0, None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> "CountingRelay":
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        for w in self.writers:
            w.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        self.writers += [writer, up_w]
        await asyncio.gather(self._pump(reader, up_w, "up"), self._pump(up_r, writer, "down"))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await reader.read(65536):
                setattr(self, way, getattr(self, way) + len(data))
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def wire_bytes(args: argparse.Namespace, pb2: Any, pb2_grpc: Any, n: int = 20
                     ) -> dict[tuple[str, str, str], tuple[float, float]]:
    """Per request, on one warm connection: (bytes client -> gateway, bytes gateway -> client)."""
    out = {}
    async with CountingRelay(args.port) as rest_relay, CountingRelay(args.grpc_port) as grpc_relay:
        async with clients(args, pb2, pb2_grpc, rest_relay.port, grpc_relay.port, 1) as bench:
            for proto, relay in (("rest", rest_relay), ("grpc", grpc_relay)):
                for mode in args.modes:
                    for size in args.sizes:
                        call = bench.call(proto, mode, size)
                        for _ in range(3):
                            await call()
                        relay.up = relay.down = 0
                        for _ in range(n):
                            await call()
                        out[proto, mode, size] = (relay.up / n, relay.down / n)
    return out


def message_sizes(args: argparse.Namespace, pb2: Any, resp_raw: bytes, sse_raw: bytes) -> dict[str, Any]:
    """Body / message bytes of each payload, without any transport framing."""
    from google.protobuf import json_format

    sizes: dict[str, Any] = {}
    for mode in args.modes:
        for size, body in request_dicts(mode, args.prompt_bytes).items():
            sizes["req", mode, size] = (len(orjson.dumps(body)), grpc_request(pb2, body).ByteSize())
    reply = json_format.ParseDict(orjson.loads(resp_raw), pb2.ChatCompletion(), ignore_unknown_fields=True)
    sizes["resp", "unary"] = (len(resp_raw), reply.ByteSize())
    frames = [f[6:] for f in sse_raw.split(b"\n\n") if f.startswith(b"data: {")]
    chunks = [json_format.ParseDict(orjson.loads(f), pb2.ChatCompletionChunk(), ignore_unknown_fields=True)
              for f in frames]
    sizes["resp", "stream"] = (len(sse_raw), sum(c.ByteSize() for c in chunks), len(chunks))
    return sizes


async def capture_answers(args: argparse.Namespace) -> tuple[bytes, bytes]:
    """The gateway's own JSON answer and SSE stream for the small request (what the clients receive), each
    asked twice: the second must not come from the gateway's cache, or the run would measure cache hits."""
    import aiohttp

    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    out = []
    async with aiohttp.ClientSession() as session:
        for mode in ("unary", "stream"):
            for _ in range(2):
                async with session.post(url, data=orjson.dumps(request_dicts(mode, 16)["small"]),
                                        headers=AUTH_HEADERS) as r:
                    raw = await r.read()
                    if r.status != 200:
                        raise SystemExit(f"the gateway answered {r.status} to a {mode} request: {raw[:300]!r}")
                    if r.headers.get("x-gateway-cache") == "hit":
                        raise SystemExit("the gateway answered from its cache: the benchmark needs the cache off")
            out.append(raw)
    return out[0], out[1]


# ------------------------------------------------------------------ main ------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measured cell")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each measured cell")
    ap.add_argument("--first-warmup", type=float, default=3.0, help="seconds of warm-up of each path at the start")
    ap.add_argument("--concurrency", default="1 32", help='concurrent callers, e.g. "1 32"')
    ap.add_argument("--modes", default="unary stream", help='"unary stream" (non-streaming, streaming)')
    ap.add_argument("--sizes", default="small large")
    ap.add_argument("--prompt-bytes", type=int, default=16384, help="the large request's prompt length")
    ap.add_argument("--micro-repeats", type=int, default=5, help="timeit repeats of the serialisation benchmark")
    ap.add_argument("--micro-min-s", type=float, default=0.2, help="seconds per timeit repeat (at least)")
    ap.add_argument("--out", default=None, help="the report (default /tmp/grpc-vs-rest-<UTC time>.md)")
    ap.add_argument("--port", type=int, default=18151)
    ap.add_argument("--grpc-port", type=int, default=18152)
    ap.add_argument("--upstream-port", type=int, default=18180,
                    help="its own port (not the harness's 18080, which other runs start and stop); reused if answering")
    ap.add_argument("--upstream", choices=("auto", "nginx", "aiohttp"), default="auto",
                    help="auto: nginx when installed, else bench/fake_upstream_aiohttp.py")
    ap.add_argument("--gw-cpus", default="0")
    ap.add_argument("--load-cpus", default="1")
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python")
                    if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable,
                    help="the project's Python (its llm-gateway script runs the gateway)")
    ap.add_argument("--harness", default=os.environ.get("BENCH_HARNESS", str(ROOT.parent / "shared" / "bench")))
    ap.add_argument("--lock", default=os.environ.get("BENCH_LOCK"), help="hold this flock(2) lock while measuring")
    args = ap.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split()]
    args.modes, args.sizes = args.modes.split(), args.sizes.split()
    args.out = Path(args.out or f"/tmp/grpc-vs-rest-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md")
    args.loadavg_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    with open(path, "a") as f:
        log(f"waiting for the lock {path}")
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def run(args: argparse.Namespace) -> str:
    from bench.grpc_vs_rest_codec import Budget
    from bench.grpc_vs_rest_codec import measure as measure_codec
    from bench.grpc_vs_rest_report import render
    from gateway.grpc_api.codegen import load

    if not (Path(args.harness) / "make_upstream_conf.py").exists():
        raise SystemExit(f"the shared bench harness is not at {args.harness} (set --harness or BENCH_HARNESS)")
    pb2, pb2_grpc = load()
    tmp = Path(tempfile.mkdtemp(prefix="grpc-vs-rest-"))
    started: list[Started] = []
    with locked(args.lock):
        try:
            upstream, note = ensure_upstream(args, tmp)
            started += [upstream] if upstream else []
            gw = start_gateway(args, tmp)
            started.append(gw)
            os.sched_setaffinity(0, {int(c) for c in args.load_cpus.split(",")})
            log(f"gateway pid {gw.proc.pid} ready (REST :{args.port}, gRPC :{args.grpc_port}); upstream: {note}")
            resp_raw, sse_raw = asyncio.run(capture_answers(args))
            sizes = message_sizes(args, pb2, resp_raw, sse_raw)
            wire = asyncio.run(wire_bytes(args, pb2, pb2_grpc))
            results = asyncio.run(run_matrix(args, pb2, pb2_grpc, gw.proc.pid, log))
        finally:
            for p in reversed(started):
                p.stop()
        log("serialisation microbenchmark")
        frames = [f[6:] for f in sse_raw.split(b"\n\n") if f.startswith(b"data: {")]
        requests = {s: b for s, b in request_dicts("unary", args.prompt_bytes).items() if s in args.sizes}
        micro = measure_codec(pb2, requests, resp_raw, frames[1], Budget(args.micro_repeats, args.micro_min_s))
    shutil.rmtree(tmp, ignore_errors=True)
    return render(args, note, " ".join(gateway_command(args.python)), sizes, wire, results, micro)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for tool in ("taskset",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)
    log(f"report written to {args.out}")


if __name__ == "__main__":
    main()
