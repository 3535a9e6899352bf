"""Write openapi.subset.yaml: the part of OpenAI's OpenAPI spec that the tests validate against.

    python tests/vendor/openai/make_subset.py [path/to/openapi.yaml]

The input is openapi.yaml of github.com/openai/openai-openapi (default: ../shared/reference/openai-openapi.yaml
next to the repository). The output keeps the spec's `openapi` version and `info` block, and of its components
only the schemas in ROOTS, every schema a test passes to `conforms("...")`, and everything those refer to
(`$ref`s and discriminator mappings, transitively), each unchanged and in the spec's order.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
DEFAULT_SPEC = REPO.parent / "shared" / "reference" / "openai-openapi.yaml"
OUT = HERE / "openapi.subset.yaml"

# What the gateway answers, and what the next endpoints (embeddings, the Responses API) will answer.
ROOTS = (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "CreateCompletionResponse",
    "ListModelsResponse", "Model", "ErrorResponse",
    "CreateEmbeddingResponse", "CreateResponse", "Response", "ResponseStreamEvent",
)
_REF = "#/components/schemas/"
_CONFORMS = re.compile(r"""conforms\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def names_the_tests_use(tests: Path = REPO / "tests") -> set[str]:
    """Schema names given to the `conforms` fixture anywhere under tests/."""
    found: set[str] = set()
    for path in tests.rglob("*.py"):
        found.update(_CONFORMS.findall(path.read_text(encoding="utf-8")))
    return found


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)
    elif isinstance(node, str) and node.startswith(_REF):
        yield node[len(_REF):]


def closure(schemas: dict[str, Any], roots: set[str]) -> set[str]:
    missing = roots - set(schemas)
    if missing:
        raise SystemExit(f"not schemas of the spec: {sorted(missing)}")
    keep: set[str] = set()
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        keep.add(name)
        for ref in _refs(schemas[name]):
            if ref not in schemas:
                raise SystemExit(f"{name} refers to {ref}, which the spec does not define")
            todo.append(ref)
    return keep


def subset(spec: dict[str, Any], roots: set[str]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    keep = closure(schemas, roots)
    return {"openapi": spec["openapi"], "info": spec["info"],
            "components": {"schemas": {name: body for name, body in schemas.items() if name in keep}}}


HEADER = """\
# A subset of OpenAI's OpenAPI spec (github.com/openai/openai-openapi, MIT licence: see LICENSE), written by
# tests/vendor/openai/make_subset.py from openapi.yaml at commit {commit}. Do not edit; regenerate (README.md).
"""


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else DEFAULT_SPEC
    commit = argv[2] if len(argv) > 2 else "f85dbe2"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with source.open(encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)
    out = subset(spec, set(ROOTS) | names_the_tests_use())
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    text = yaml.dump(out, Dumper=dumper, sort_keys=False, allow_unicode=True, width=120)
    OUT.write_text(HEADER.format(commit=commit) + text, encoding="utf-8")
    print(f"{OUT.relative_to(REPO)}: {len(out['components']['schemas'])} of {len(spec['components']['schemas'])} "
          f"schemas, {OUT.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
