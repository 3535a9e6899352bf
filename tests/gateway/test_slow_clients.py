"""Slow and idle clients cannot hold connections; a long answer is never cut.

Raw sockets against a real gateway with short deadlines: a connection that
sends nothing, headers trickled a byte at a time, a body shorter than its
Content-Length, an idle kept-alive connection, more connections than allowed.
Each is answered in OpenAI's error shape (where an answer is possible) and
closed, within the configured deadline; meanwhile a stream that runs longer
than every deadline completes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Iterator

import httpx
import pytest

from tests.conftest import MODEL
from tests.server import GatewayProcess
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.process]

LIMITS = {"header_timeout_s": 1.0, "body_timeout_s": 2.0, "body_idle_timeout_s": 1.0, "idle_timeout_s": 1.0,
          "max_connections": 12}


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    cfg = {"server": {"watch_config": False, **LIMITS},
           "models": [{"card": MODEL, "n_ctx": 1024, "default_max_tokens": 16}]}
    with GatewayProcess(cfg) as g:
        yield g


def connect(gw: GatewayProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return s


def read_all(s: socket.socket, timeout: float = 10) -> tuple[bytes, float]:
    """Everything until the server closes; and when that happened."""
    s.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except socket.timeout:
            raise AssertionError("the server kept the connection open") from None
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks), time.monotonic()


def error_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return status, err


def test_a_connection_that_sends_nothing_gets_a_408_and_is_closed(gw: GatewayProcess) -> None:
    s = connect(gw)
    t0 = time.monotonic()
    raw, closed = read_all(s)
    assert 0.8 < closed - t0 < 3.0, closed - t0
    status, err = error_of(raw)
    assert status == 408 and err["code"] == "request_timeout"


def test_trickled_headers_are_cut_at_the_header_deadline(gw: GatewayProcess) -> None:
    s = connect(gw)
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200
    t0 = time.monotonic()
    sent = 0
    try:
        for byte in request:
            s.send(bytes([byte]))
            sent += 1
            time.sleep(0.02)
            if time.monotonic() - t0 > 4:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw, closed = read_all(s)
    assert closed - t0 < 3.0, "headers trickled for longer than the deadline"
    status, err = error_of(raw)
    assert status == 408 and err["code"] == "request_timeout"


def test_a_body_shorter_than_its_content_length_gets_a_408(gw: GatewayProcess) -> None:
    s = connect(gw)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body)
    t0 = time.monotonic()
    raw, closed = read_all(s)
    assert 0.8 < closed - t0 < 3.5, closed - t0
    status, err = error_of(raw)
    assert status == 408 and err["code"] == "request_timeout"


def test_an_idle_kept_alive_connection_is_closed(gw: GatewayProcess) -> None:
    s = connect(gw)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    t0 = time.monotonic()
    raw, closed = read_all(s)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:100]
    assert closed - t0 < 3.0, "the idle connection stayed open"


def test_connections_beyond_the_limit_get_a_503(gw: GatewayProcess) -> None:
    held = [connect(gw) for _ in range(LIMITS["max_connections"])]
    try:
        time.sleep(0.2)
        extra = connect(gw)
        raw, _ = read_all(extra, timeout=5)
        status, err = error_of(raw)
        assert status == 503 and err["code"] == "too_many_connections"
        assert b"retry-after: 1" in raw.lower()
    finally:
        for s in held:
            s.close()
    wait_until(lambda: httpx.get(f"{gw.root_url}/health", timeout=5).status_code == 200, timeout=30,
               interval=0.1, ignore=(httpx.HTTPError,), what="served again once they left")


def test_a_stream_longer_than_every_deadline_is_not_cut(gw: GatewayProcess) -> None:
    """An answer that streams for longer than every deadline, on a kept-alive connection."""
    longest = max(v for k, v in LIMITS.items() if k.endswith("_timeout_s"))
    for max_tokens in (200, 400, 800):  # a fast machine needs a longer answer to outlast the deadlines
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
                "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
        with httpx.Client(timeout=120) as client:
            assert client.get(f"{gw.root_url}/health").status_code == 200
            t0 = time.monotonic()
            frames = []
            with client.stream("POST", f"{gw.base_url}/chat/completions", json=body,
                               headers={"Cache-Control": "no-store"}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        frames.append(line)
            took = time.monotonic() - t0
        assert frames[-1] == "data: [DONE]" and any('"finish_reason":"length"' in f for f in frames), frames[-3:]
        if took > longest + 0.5:
            return
    pytest.fail(f"even {max_tokens} tokens took only {took:.1f}s: too short to outlast the {longest:g}s deadlines")


def test_slow_clients_do_not_delay_others(gw: GatewayProcess) -> None:
    stop = threading.Event()

    def idler() -> None:
        while not stop.is_set():
            try:
                s = connect(gw)
                s.recv(1)
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=idler, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            r = httpx.post(f"{gw.base_url}/chat/completions", timeout=30,
                           json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            assert r.status_code == 200
    finally:
        stop.set()
