"""Where file contents live: a storage interface, with a local directory as the default.

Several replicas share one directory by mounting the same volume (a ReadWriteMany volume in Kubernetes,
or NFS); another store (an object store) implements the same three methods. Writes go to a temporary
name first and are renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import abc
import asyncio
import os
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class BlobStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, name: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def get(self, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def delete(self, name: str) -> None: ...


class LocalBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):  # ids are ours, but a path is never built from anything else
            raise ValueError(f"not a blob name: {name!r}")
        return self.root / name

    async def put(self, name: str, data: bytes) -> None:
        await asyncio.to_thread(self._write, self._path(name), data)

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    async def get(self, name: str) -> bytes | None:
        path = self._path(name)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None

    async def delete(self, name: str) -> None:
        try:
            await asyncio.to_thread(self._path(name).unlink)
        except FileNotFoundError:
            pass


def default_dir() -> Path:
    """$LLM_GATEWAY_DATA_DIR/files, else the XDG data home's llm-gateway/files."""
    base = os.environ.get("LLM_GATEWAY_DATA_DIR")
    if base:
        return Path(base) / "files"
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "llm-gateway" / "files"
