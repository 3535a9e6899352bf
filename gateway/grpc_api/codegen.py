"""Generate the Python stubs of protos/ with grpcio-tools: `python -m gateway.grpc_api.codegen`.

The stubs go to `_generated/` (git-ignored), never edited by hand. `load()` regenerates them when they are
missing or older than a .proto, so a fresh clone works without a build step; tests/run.sh runs this once.
protoc's stubs import each other by proto path (`from llm_gateway.v1 import chat_pb2`), so `_generated`
goes on sys.path."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
PROTOS = HERE / "protos"
OUT = HERE / "_generated"


def proto_files(protos: Path = PROTOS) -> list[Path]:
    return sorted(protos.rglob("*.proto"))


def stale(protos: Path = PROTOS, out: Path = OUT) -> bool:
    """True when a stub is missing or older than its .proto."""
    for proto in proto_files(protos):
        rel = proto.relative_to(protos).with_suffix("")
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            stub = out / f"{rel}{suffix}"
            if not stub.exists() or stub.stat().st_mtime < proto.stat().st_mtime:
                return True
    return False


def generate(protos: Path = PROTOS, out: Path = OUT) -> Path:
    """Run protoc into a fresh directory, then swap it in (two workers generating at once both succeed)."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    tmp = Path(tempfile.mkdtemp(prefix="_generated-", dir=out.parent))
    try:
        args = ["grpc_tools.protoc", f"-I{protos}", f"-I{include}", f"--python_out={tmp}",
                f"--grpc_python_out={tmp}", *(str(p) for p in proto_files(protos))]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {protos}")
        old = out.parent / f"_generated-old-{os.getpid()}"
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load() -> tuple[ModuleType, ModuleType]:
    """(chat_pb2, chat_pb2_grpc), generated first if needed."""
    if stale():
        generate()
    if str(OUT) not in sys.path:
        sys.path.insert(0, str(OUT))
    return (importlib.import_module("llm_gateway.v1.chat_pb2"), importlib.import_module("llm_gateway.v1.chat_pb2_grpc"))


if __name__ == "__main__":
    print(generate())
