"""The README is read by people who cloned only this repository: nothing it points at may live outside it.
Every relative link and every backticked path that names a file or folder of the repository must exist."""

from __future__ import annotations

import re

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.unit
README = (ROOT / "README.md").read_text(encoding="utf-8")
TOP = ("gateway/", "backends/", "routing/", "deploy/", "tests/", "model-cards/", "docker/", "bench/")


def test_nothing_outside_the_repository() -> None:
    assert "../" not in README, [line for line in README.splitlines() if "../" in line]


def test_relative_links_and_named_paths_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", README)
    paths = [p for p in re.findall(r"`([\w./-]+)`", README) if p.startswith(TOP) and "*" not in p]
    missing = [p for p in [*[x for x in links if "://" not in x], *paths] if not exists(p.split(":")[0])]
    assert paths and not missing, missing


def exists(path: str) -> bool:
    """A file or folder, or `module.Symbol` of a module file (`gateway/settings.Settings`)."""
    return (ROOT / path).exists() or (ROOT / (path.rsplit(".", 1)[0] + ".py")).is_file()
