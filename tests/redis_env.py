"""Real Redis for the tests: the one `tests/run.sh` found or started ($REDIS_URL), or a private throwaway."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from tests.server import free_port

DEFAULT_URL = "redis://127.0.0.1:6379/15"


def redis_url() -> str:
    return os.environ.get("REDIS_URL", DEFAULT_URL)


def require_redis() -> str:
    url = redis_url()
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(16).startswith(b"+PONG"):
                raise OSError("no PONG")
    except OSError as exc:
        pytest.fail(f"these tests need a real Redis at {url} ({exc}); run them with `make test`, "
                    f"which finds or starts one")
    return url


def unique_prefix() -> str:
    return f"gwtest:{uuid.uuid4().hex[:10]}:"


@asynccontextmanager
async def fresh_redis() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """An asyncio client on $REDIS_URL and a fresh key prefix, whose keys are deleted afterwards; fails the
    test (never skips) without Redis."""
    client = aioredis.Redis.from_url(require_redis(), socket_connect_timeout=1, socket_timeout=2)
    prefix = unique_prefix()
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class ThrowawayRedis:
    """A private redis-server on its own port, which a test may stop and start again (and reconfigure with
    CONFIG SET, which the shared Redis must never see); `args`: more redis-server options."""

    def __init__(self, *args: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed: the Redis-outage test needs its own server to stop")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "ThrowawayRedis":
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None
