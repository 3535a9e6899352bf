"""A TCP proxy the test controls, to take a server (Redis) away from one gateway and give it back.

The gateway is pointed at the proxy; the shared server behind it never notices. `cut()` closes the
listener and resets every open connection (new ones are refused: a Redis that died); `silence()`
keeps accepting but forwards nothing and answers nothing (a Redis that hangs, or a black-holed
network); `restore()` drops what is held and forwards again, on the same port.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Any

FORWARD, CUT, SILENT = "forward", "cut", "silent"


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.mode = FORWARD
        self.connections = 0  # accepted since start, in any mode
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> "TcpProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    def url(self, scheme: str = "redis", path: str = "") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> None:
        self._call(self._set(CUT))

    def silence(self) -> None:
        self._call(self._set(SILENT))

    def restore(self) -> None:
        self._call(self._set(FORWARD))

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._set(CUT))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ the proxy's own loop

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)

    async def _set(self, mode: str) -> None:
        self.mode = mode
        for writer in list(self._writers):  # whatever was open belongs to the mode before
            _reset(writer)
        self._writers.clear()
        if mode == CUT and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != CUT and self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        if self.mode != FORWARD:  # silent: read and drop, say nothing, until reset
            try:
                while await reader.read(65536):
                    pass
            except OSError:
                pass
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                _reset(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, as a crashed peer would."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()
