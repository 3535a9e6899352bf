"""The engine process: one llama.cpp model instance, served to the gateway's workers over a Unix socket.

It hosts a generation engine (`LlamaEngine`, or `BatchEngine` with `parallel` above 1) or, for an
embedding model (settings `kind: embed`), an `EmbedEngine`; the supervision is the same for all.

The gateway never runs llama.cpp in its own process: a native crash (a
segfault in a CPU kernel, an abort, the OOM killer) then costs this process
and the requests in it, never the gateway or its other routes. The
supervisor starts it as

    python -m backends.llamacpp.host SOCKET NAME SETTINGS_JSON

and reads one JSON line per phase from its stdout: `{"event": "loading"}`,
then `{"event": "ready", "info": {...}}` once the model is loaded and warm
and the socket listens, or `{"event": "failed", "error": "..."}` and exit
code `wire.LOAD_FAILED` when the model cannot be loaded (a missing or corrupt
file: restarting would not help). The log goes to stderr. The process ends
on SIGTERM (cancelling what runs), and when its stdin closes, which is how it
notices that the supervisor is gone, however that died.

Messages on the socket: see `wire`.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any, Callable

from backends.llamacpp import wire
from backends.llamacpp.batch import BatchEngine
from backends.llamacpp.embed_engine import EmbedEngine
from backends.llamacpp.jobs import DONE, EMBED, END, ERROR, TEXT, VECTORS, EmbedJob, EngineSettings, Job, Sampling
from backends.llamacpp.schedule import class_of
from backends.llamacpp.serial import LlamaEngine
from backends.llamacpp.sysinfo import LoadLog, system_info

log = logging.getLogger("llm_gateway.engine")

STATS_INTERVAL_S = 0.1
MAX_UNREAD_BYTES = 64 * 1024 * 1024  # answers a worker has not read yet, before it is dropped
FAULT_ENV = "LLM_GATEWAY_ENGINE_FAULT"  # fault injection for tests: see `_inject_faults`
HOLD_ENV = "LLM_GATEWAY_ENGINE_HOLD"  # for tests: a file whose appearance lets the load begin

Engine = LlamaEngine | BatchEngine | EmbedEngine


def emit(event: dict[str, Any]) -> None:
    """One line for the supervisor on stdout."""
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Connection:
    """One worker's connection: its jobs, and an outbox the engine thread fills and the loop drains.

    The engine thread posts events as it samples tokens, and says when a step is over (`step_done`):
    one `call_soon_threadsafe` then wakes the loop for the whole step, so a decode step's tokens for
    many sequences go out in one write, and the loop's thread wakes once per step, not per token (on
    2 cores every wake-up takes a core from llama.cpp's threads for a moment).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter,
                 stats: Callable[[], dict[str, Any]]) -> None:
        self.loop = loop
        self.writer = writer
        self._stats = stats
        self.jobs: dict[int, Job] = {}
        self.done_jobs: list[int] = []  # ended on the engine thread (list.append is atomic)
        self._out = bytearray()
        self._lock = threading.Lock()
        self._scheduled = False

    def poster(self, job_id: int) -> Any:
        def post(ev: tuple) -> None:  # on the engine thread
            kind = ev[0]
            if kind == TEXT:
                data = wire.pack(wire.TEXT, job_id, ev[1], ev[2], ev[3] if len(ev) > 3 else None)
            elif kind == DONE:
                data = wire.pack(wire.DONE, job_id, ev[1], ev[2], ev[3])
            elif kind == END:
                data = wire.pack(wire.END, job_id)
            elif kind == VECTORS:
                data = wire.pack(wire.VECTORS, job_id, ev[1])
            else:
                data = wire.pack(wire.ERROR, job_id, _safe_message(ev[1]))
            self._queue(data)
        return post

    def _queue(self, data: bytes) -> None:
        with self._lock:
            self._out += data

    def step_done(self) -> None:
        """On the engine thread, after a step: one wake-up of the loop carries the step's events."""
        with self._lock:
            if not self._out or self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        with self._lock:
            data = bytes(self._out)
            self._out.clear()
            self._scheduled = False
        if self.done_jobs:
            # Counters in the same write as the END: whoever saw the job end sees it counted.
            data += wire.pack(wire.STATS, self._stats())
            while self.done_jobs:
                self.jobs.pop(self.done_jobs.pop(), None)
        self.send(data)

    def send(self, data: bytes) -> None:
        if not data or self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_UNREAD_BYTES:
            # A worker that stopped reading (stopped, or stuck) must not grow this process without bound:
            # drop it, which cancels its jobs; it reconnects when it reads again.
            log.error("a worker stopped reading its answers; dropping its connection")
            self.writer.transport.abort()

    def cancel_all(self) -> None:
        for job in self.jobs.values():
            job.cancelled.set()
        self.jobs.clear()


class EngineServer:
    """Serves one loaded engine to every connected worker."""

    def __init__(self, engine: Engine, info: dict[str, Any]) -> None:
        self.engine = engine
        self.info = info
        self.connections: set[Connection] = set()
        self._last_stats: dict[str, Any] | None = None
        engine.after_step = self._step_done

    def _step_done(self) -> None:
        for conn in list(self.connections):
            conn.step_done()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(asyncio.get_running_loop(), writer, self.engine.snapshot)
        self.connections.add(conn)
        conn.send(wire.pack(wire.HELLO, self.info))
        conn.send(wire.pack(wire.STATS, self.engine.snapshot()))
        messages = wire.Reader()
        try:
            while data := await reader.read(65536):
                for msg in messages.feed(data):
                    self._dispatch(conn, msg)
        except (ConnectionError, ValueError) as exc:  # a reset, or bytes that are not our protocol
            log.warning("engine connection dropped: %s", exc)
        finally:
            self.connections.discard(conn)
            conn.cancel_all()  # the worker is gone: nobody will read these answers
            writer.close()

    def _dispatch(self, conn: Connection, msg: list[Any]) -> None:
        op = msg[0]
        if op == wire.SUBMIT:
            self._submit(conn, msg[1], msg[2])
        elif op == wire.CANCEL:
            job = conn.jobs.get(msg[1])
            if job is not None:
                job.cancelled.set()

    def _submit(self, conn: Connection, job_id: int, spec: dict[str, Any]) -> None:
        try:
            job = _embed_job(spec) if isinstance(self.engine, EmbedEngine) else _job(spec)
        except Exception as exc:  # a grammar llama.cpp refuses, say
            conn.send(wire.pack(wire.ERROR, job_id, _safe_message(exc)))
            return
        post = conn.poster(job_id)

        def post_and_forget(ev: tuple, post: Any = post) -> None:
            post(ev)
            if ev[0] in (END, ERROR):
                conn.done_jobs.append(job_id)  # forgotten on the loop, at the next flush

        job.post = post_and_forget
        try:
            self.engine.submit(job)
        except queue.Full:
            conn.send(wire.pack(wire.FULL, job_id, self.engine.retry_after()))
            return
        conn.jobs[job_id] = job

    async def push_stats(self) -> None:
        """Counters to every worker, when they changed."""
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            stats = self.engine.snapshot()
            if stats != self._last_stats and self.connections:
                self._last_stats = stats
                data = wire.pack(wire.STATS, stats)
                for conn in list(self.connections):
                    conn.send(data)


def _job(spec: dict[str, Any]) -> Job:
    grammar = None
    if spec.get("grammar"):
        from llama_cpp.llama_grammar import LlamaGrammar

        grammar = LlamaGrammar.from_string(spec["grammar"], verbose=False)
    return Job(prompt_tokens=spec["prompt"], max_tokens=spec["max_tokens"], sampling=Sampling(**spec["sampling"]),
               stop=spec["stop"], n=spec["n"], grammar=grammar, ignore_eos=spec["ignore_eos"],
               logprobs=spec.get("logprobs"), priority=class_of(spec.get("priority")))


def _embed_job(spec: dict[str, Any]) -> EmbedJob:
    return EmbedJob(inputs=spec["inputs"], normalize=spec["normalize"])


def _safe_message(exc: BaseException) -> str:
    """Engine errors reach clients only as 'the model failed'; the text is for the gateway's log."""
    return f"{type(exc).__name__}: {exc}"[:500]


def _inject_faults(engine: Engine, settings: EngineSettings) -> None:
    """Test hooks (`LLM_GATEWAY_ENGINE_FAULT`): `segv-while-loading` crashes during warm-up like the
    AMX kernel bug does (not in safe mode, which turns that kernel off); `segv-always-while-loading`
    crashes in safe mode too. Real signals, so the supervisor sees what it would see in production."""
    fault = os.environ.get(FAULT_ENV, "")
    if fault not in ("segv-while-loading", "segv-always-while-loading"):
        return
    if fault == "segv-while-loading" and not settings.use_extra_bufts:
        return
    real = engine._warmup

    def crashing_warmup() -> None:
        real()
        os.kill(os.getpid(), signal.SIGSEGV)

    engine._warmup = crashing_warmup  # type: ignore[method-assign]


def _watch_stdin() -> None:
    """Exit when the supervisor's end of stdin closes: the supervisor is gone, so are we."""
    def wait() -> None:  # os.read, not sys.stdin: a buffered reader's lock would trouble interpreter exit
        try:
            while os.read(0, 4096):
                pass
        finally:
            os._exit(0)

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()


async def serve(socket_path: str, name: str, settings: EngineSettings) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    emit({"event": "loading", "pid": os.getpid()})
    hold = os.environ.get(HOLD_ENV)
    while hold and not os.path.exists(hold):  # a test looks at the gateway while this model "loads"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    load_log = LoadLog()
    engine: Engine
    if settings.kind == EMBED:
        engine = EmbedEngine(settings, name=name)
    else:
        engine = (BatchEngine if settings.parallel > 1 else LlamaEngine)(settings, name=name)
    _inject_faults(engine, settings)
    engine.start()
    try:
        await engine.wait_loaded()
    except BaseException as exc:
        emit({"event": "failed", "error": str(exc)})
        return wire.LOAD_FAILED
    info = {"pid": os.getpid(), "name": name, "n_ctx": engine.n_ctx, "n_vocab": engine.llm.n_vocab(),
            "safe_mode": not settings.use_extra_bufts, "load_s": round(time.monotonic() - started, 2),
            "weights": load_log.weight_buffers(), **system_info(), **engine.extra_info()}
    server = EngineServer(engine, info)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = await asyncio.start_unix_server(server.handle, path=socket_path)
    pusher = asyncio.create_task(server.push_stats())
    emit({"event": "ready", "info": info})
    await stopping.wait()
    pusher.cancel()
    listener.close()
    await asyncio.to_thread(engine.stop)
    return 0


def main(argv: list[str]) -> int:
    socket_path, name, settings_json = argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s engine {name} [%(process)d]: %(message)s")
    faulthandler.enable()  # a native crash prints the Python stack to stderr before the process dies
    _watch_stdin()
    return asyncio.run(serve(socket_path, name, EngineSettings(**json.loads(settings_json))))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
