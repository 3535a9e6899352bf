"""The vendored subset of OpenAI's OpenAPI spec holds every schema the tests validate against, whole."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.openapi_schema import VENDORED_SPEC
from tests.paths import ROOT

VENDOR = ROOT / "tests" / "vendor" / "openai"


@lru_cache(maxsize=1)
def make_subset() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_subset", VENDOR / "make_subset.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@lru_cache(maxsize=1)
def vendored() -> dict[str, Any]:
    with VENDORED_SPEC.open(encoding="utf-8") as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def test_every_schema_the_tests_name_is_vendored_with_all_it_refers_to() -> None:
    schemas = vendored()["components"]["schemas"]
    tool = make_subset()
    used = tool.names_the_tests_use()
    assert {"CreateChatCompletionResponse", "CreateChatCompletionStreamResponse", "ErrorResponse"} <= used, used
    wanted = used | set(tool.ROOTS)
    assert not wanted - set(schemas), f"regenerate the subset (tests/vendor/openai/README.md): {wanted - set(schemas)}"
    dangling = {ref for body in schemas.values() for ref in tool._refs(body)} - set(schemas)
    assert not dangling, f"the subset refers to schemas it lacks: {dangling}"
    assert tool.closure(schemas, wanted) == set(schemas), "the subset holds schemas nothing needs"


def test_the_subset_keeps_the_upstream_info_and_licence() -> None:
    info = vendored()["info"]
    assert info["title"] == "OpenAI API" and info["license"] == {"name": "MIT", "identifier": "MIT"}
    assert vendored()["openapi"].startswith("3.1")
    licence = (VENDOR / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("The MIT License") and "Copyright (c) OpenAI" in licence
    assert "f85dbe2" in (VENDOR / "README.md").read_text(encoding="utf-8")


def test_the_subset_is_what_make_subset_writes_from_the_upstream_spec() -> None:
    tool = make_subset()
    if not tool.DEFAULT_SPEC.is_file():
        pytest.skip(f"the whole upstream spec is not at {tool.DEFAULT_SPEC}; the vendored subset is checked above")
    with tool.DEFAULT_SPEC.open(encoding="utf-8") as f:
        upstream = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    expected = tool.subset(upstream, set(tool.ROOTS) | tool.names_the_tests_use())
    assert vendored() == expected, "the subset differs from its source: regenerate it, do not edit it"
