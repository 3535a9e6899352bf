"""Hatch build hook: the wheel carries the gRPC stubs, generated from gateway/grpc_api/protos at build time.

An installed wheel then never needs protoc (grpcio-tools) and never writes into site-packages. The
generator is the hook's dependency in pyproject.toml, pinned, so the build environment has it and the same
protos give the same stubs; a build without isolation must have that version installed. The stubs are
generated into a temporary directory and force-included as gateway/grpc_api/_generated (the checkout's
own `_generated/` is excluded from the wheel and left alone). An editable install runs from the checkout:
the stubs are generated there, as `codegen.load()` would on first use."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

CODEGEN = Path("gateway") / "grpc_api" / "codegen.py"
STUBS_IN_WHEEL = "gateway/grpc_api/_generated"


def load_codegen(root: Path) -> ModuleType:
    """gateway/grpc_api/codegen.py on its own (importing the gateway package would need its dependencies)."""
    spec = importlib.util.spec_from_file_location("_llm_gateway_codegen", root / CODEGEN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GrpcStubsHook(BuildHookInterface):
    PLUGIN_NAME = "grpc-stubs"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        codegen = load_codegen(Path(self.root))
        if version == "editable":  # a checkout without grpcio-tools is told so by load(), when gRPC is on
            if codegen.stale() and importlib.util.find_spec("grpc_tools") is not None:
                codegen.generate()
            return
        self._check_generator()
        self._tmp = Path(tempfile.mkdtemp(prefix="llm-gateway-grpc-stubs-"))
        out = codegen.generate(codegen.PROTOS, self._tmp / "_generated")
        build_data["force_include"][str(out)] = STUBS_IN_WHEEL

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def _check_generator(self) -> None:
        """The installed grpcio-tools must be the pinned one: its stubs need grpcio and protobuf at least
        as new as itself, which the `grpc` extra promises only for the pinned version."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        pins = [Requirement(d) for d in self.config.get("dependencies", [])]
        pin = next((r for r in pins if r.name == "grpcio-tools"), None)
        try:
            installed = version("grpcio-tools")
        except PackageNotFoundError:
            installed = None
        if pin is not None and (installed is None or not pin.specifier.contains(installed, prereleases=True)):
            raise RuntimeError(f"building llm-gateway's wheel generates its gRPC stubs with {pin}, but the build "
                               f"environment has {'no grpcio-tools' if installed is None else installed}: "
                               "build with isolation (the default), or install that version first")
