"""The layers, enforced: the OpenAI contract at the bottom, backends above it, routing above them, the
HTTP gateway on top. A lower layer never imports a higher one, not even inside a function, and no two
of our modules import each other in a loop.

Read from the source with `ast` (nothing is imported), so a violation fails here before it can hide
behind import order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.paths import ROOT

PACKAGES = ("backends", "routing", "gateway")
CONTRACT = "backends.contract"
# The concrete provider and engine classes: only the one factory maps config onto them.
CONCRETE = ("backends.llamacpp.backend", "backends.anthropic.backend", "backends.vllm", "backends.openai_compat")
FACTORY = "routing.backend_factory"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every import of one of our packages in the file, module level or not, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import; spell the module out"
            if node.module and node.module.split(".")[0] in PACKAGES:
                # `from gateway import metrics` imports the module gateway.metrics
                for alias in node.names:
                    found.append((f"{node.module}.{alias.name}", node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] in PACKAGES]
    return found


def _graph() -> dict[str, list[tuple[str, int]]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, list[tuple[str, int]]] = {}
    for name, path in modules.items():
        edges = []
        for target, line in _imports(path):
            # `from a.b import c`: the module a.b.c if there is one, else a.b (c is a name in it)
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != name:
                edges.append((target, line))
        graph[name] = edges
    return graph


GRAPH = _graph()


def _layer(module: str) -> int:
    if module == CONTRACT or module.startswith(CONTRACT + "."):
        return 0
    return {"backends": 1, "routing": 2, "gateway": 3}[module.split(".")[0]]


LAYER_NAMES = ["the OpenAI contract (backends.contract)", "backends", "routing", "gateway"]


def test_the_graph_sees_the_whole_tree() -> None:
    assert len(GRAPH) > 60 and {"backends.contract.protocol", "routing.router", "gateway.pipeline"} <= set(GRAPH)
    assert any(t == "backends.contract.errors" for t, _ in GRAPH["backends.contract.protocol"])


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{m.replace('.', '/')}.py:{line}: {LAYER_NAMES[_layer(m)]} imports {t} ({LAYER_NAMES[_layer(t)]})"
              for m, edges in GRAPH.items() for t, line in edges if _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_the_contract_imports_nothing_of_ours_but_itself() -> None:
    outside = [f"{m}:{line} imports {t}" for m, edges in GRAPH.items() if _layer(m) == 0
               for t, line in edges if _layer(t) != 0]
    assert not outside, "\n".join(outside)


def test_only_the_factory_names_concrete_backends() -> None:
    def concrete(t: str) -> bool:
        return any(t == c or t.startswith(c + ".") for c in CONCRETE)

    users = sorted({m for m, edges in GRAPH.items() if not m.startswith("backends.")
                    for t, _ in edges if concrete(t)})
    assert users == [FACTORY], users


def test_no_import_loops() -> None:
    """Tarjan's strongly connected components over every import, function-local ones included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in GRAPH.get(v, []):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not loops, loops


@pytest.mark.parametrize("pattern, where", [
    (r"^\s*(from|import) (gateway|routing)\b", "backends"),
    (r"^\s*(from|import) gateway\b", "routing"),
])
def test_the_issue_greps_print_nothing(pattern: str, where: str) -> None:
    regex = re.compile(pattern)
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / where).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if regex.match(line)]
    assert not hits, hits
