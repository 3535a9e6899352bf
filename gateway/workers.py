"""`serve --workers N`: N processes, each listening on its own socket bound to the same port.

uvicorn's multi-worker mode shares one listening socket between its workers,
and a worker that wakes first accepts a whole burst of connections: in the
load harness one of two workers took all 128 keep-alive connections while the
other idled. With a socket per worker (SO_REUSEPORT) the kernel spreads new
connections over the workers by their address hash. The supervisor here
restarts a worker that dies, stops them all on SIGINT/SIGTERM (each finishes
its requests, as uvicorn does on those signals), and gives up when workers
keep dying at start-up. (The local models' engine processes are supervised
by the same parent, in a thread of its own: `backends.llamacpp.control`.) Where SO_REUSEPORT is missing, or the port is 0,
the CLI uses uvicorn's own mode instead.

With `server.grpc` on, every worker also serves gRPC on the configured port: grpc's server sets
SO_REUSEPORT itself, so the workers' gRPC sockets form one group too and the kernel spreads gRPC
connections (a channel is one connection: its calls stay on one worker) over them; a replaced worker
joins it again. The CLI checks that port once, before any worker starts (`port_taken`).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from typing import Any

log = logging.getLogger("llm_gateway")

BACKLOG = 2048  # uvicorn's default
EARLY_DEATH_S = 5.0  # a worker that dies sooner than this after its start counts as a failed start
MAX_FAILED_STARTS = 3
GRACE_MARGIN_S = 5.0  # a worker gets its drain (uvicorn's timeout_graceful_shutdown) and this, then SIGKILL


def reuse_port_available(port: int) -> bool:
    return port != 0 and hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def port_taken(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on now; None when it can. The probe binds without SO_REUSEPORT,
    so a port that another process's SO_REUSEPORT group holds (another `--workers` gateway, or gRPC's
    server, which sets it by default) counts as taken, rather than the kernel quietly splitting its
    connections between that process and this one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket in the port's SO_REUSEPORT group; raises OSError when the port is taken by anyone else."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_workers(workers: int, host: str, port: int, uvicorn_options: dict[str, Any]) -> int:
    """Run `workers` processes serving `gateway.asgi:create` until a signal; the exit status."""
    taken = port_taken(host, port)  # fail fast, in the parent (a bound socket that never listens gets no traffic)
    if taken:
        print(f"error: cannot listen on {host}:{port}: {taken}", file=sys.stderr)
        return 1
    spawn = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int) -> tuple[Any, float]:
        proc = spawn.Process(target=_worker, args=(host, port, uvicorn_options), name=f"llm-gateway-worker-{index}")
        proc.start()
        return proc, time.monotonic()

    procs = [start(i) for i in range(workers)]
    failed_starts = 0
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, (proc, started) in enumerate(procs):
                if proc.is_alive() or stopping:
                    continue
                if time.monotonic() - started < EARLY_DEATH_S:
                    failed_starts += 1
                    if failed_starts >= MAX_FAILED_STARTS:
                        log.error("workers keep exiting at start-up (last exit code %s); stopping", proc.exitcode)
                        stopping, status = True, 1
                        break
                log.warning("worker %d (pid %s) exited with code %s; starting another", i, proc.pid, proc.exitcode)
                procs[i] = start(i)
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
        deadline = time.monotonic() + float(uvicorn_options.get("timeout_graceful_shutdown") or 0) + GRACE_MARGIN_S
        for proc, _ in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _worker(host: str, port: int, options: dict[str, Any]) -> None:
    import uvicorn

    sock = listening_socket(host, port)
    sock.listen(BACKLOG)
    config = uvicorn.Config("gateway.asgi:create", factory=True, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[sock])
