"""Validate bodies against OpenAI's official OpenAPI spec with a JSON-Schema validator.

The spec is OpenAPI 3.1 but still writes OpenAPI 3.0's `nullable: true` in
places; JSON Schema does not know that keyword, so it is rewritten to
`anyOf: [<schema>, {"type": "null"}]` before validation.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

SPEC_ENV = "OPENAI_OPENAPI_SPEC"
# The schemas the tests use, vendored from openai/openai-openapi (tests/vendor/openai/README.md says how).
VENDORED_SPEC = Path(__file__).resolve().parent / "vendor" / "openai" / "openapi.subset.yaml"


def spec_path() -> Path:
    """$OPENAI_OPENAPI_SPEC (e.g. the whole upstream openapi.yaml) if set, else the vendored subset."""
    env = os.environ.get(SPEC_ENV)
    return Path(env) if env else VENDORED_SPEC


def _rewrite_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_rewrite_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite_nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@lru_cache(maxsize=1)
def _schemas(path: str) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        spec = yaml.load(f, Loader=loader)
    return _rewrite_nullable(spec["components"]["schemas"])


@lru_cache(maxsize=None)
def validator(path: str, name: str) -> Draft202012Validator:
    schemas = _schemas(path)
    if name not in schemas:
        raise KeyError(f"{name} is not a schema in {path}")
    root = {"components": {"schemas": schemas}, "$ref": f"#/components/schemas/{name}"}
    return Draft202012Validator(root)


def errors(path: str, name: str, body: Any) -> list[str]:
    """Every violation, as 'field.path: message' lines (empty when valid)."""
    v = validator(path, name)
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(v.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))]
