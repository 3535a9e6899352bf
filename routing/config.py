"""The gateway's YAML config: server settings and the models it serves.

Later issues add routes, deployments and strategies here; this module owns the
schema and turns every mistake into a line-numbered message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routing.yaml_lines import compose, format_loc, line_of


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model_cards_dir: str | None = None


class LlamaCppModelConfig(BaseModel):
    """One model served in-process by llama.cpp."""

    model_config = ConfigDict(extra="forbid")

    card: str  # id of a model card
    backend: Literal["llamacpp"] = "llamacpp"
    model_path: str | None = None  # overrides the card's weight source
    n_ctx: int = Field(default=8192, gt=0)
    n_threads: int | None = Field(default=None, gt=0)
    n_batch: int = Field(default=512, gt=0)
    flash_attn: bool = False
    instances: int = Field(default=1, ge=1, le=16)
    max_queue: int = Field(default=16, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)
    default_max_tokens: int = Field(default=2048, gt=0)
    warmup: bool = True
    # Reuse the KV cache of a shared prompt prefix: faster multi-turn chats, but outputs then
    # depend on what ran before, so seeded and temperature-0 requests are no longer reproducible.
    reuse_prompt_prefix: bool = False
    required: bool = True  # counts towards /ready


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[LlamaCppModelConfig] = Field(
        default_factory=lambda: [LlamaCppModelConfig(card="gemma-3-270m")]
    )


class ConfigError(ValueError):
    """A config that cannot be used. `problems` holds one line-numbered message each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_config(text: str, source: str = "<config>", known_cards: set[str] | None = None) -> GatewayConfig:
    """Validate YAML text; raise ConfigError with `source:line: field: message` lines.

    With `known_cards`, every model must name an existing model card.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{source}:{line}: invalid YAML: {problem}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{source}:1: the top level must be a mapping"])
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        root = compose(text)
        problems = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            line = line_of(root, loc) or "?"
            where = format_loc(loc) or "(top level)"
            problems.append(f"{source}:{line}: {where}: {err['msg']}")
        raise ConfigError(source, problems) from exc
    problems = _semantic_problems(config, text, source, known_cards)
    if problems:
        raise ConfigError(source, problems)
    return config


def _semantic_problems(config: GatewayConfig, text: str, source: str, known_cards: set[str] | None) -> list[str]:
    """Checks that need more than one field: unknown cards, a model served twice."""
    root = compose(text)
    problems = []
    seen: set[str] = set()
    for i, model in enumerate(config.models):
        loc = ("models", i, "card")
        if known_cards is not None and model.card not in known_cards:
            problems.append(f"{source}:{line_of(root, loc) or '?'}: {format_loc(loc)}: "
                            f"no model card with id {model.card!r} (known: {', '.join(sorted(known_cards))})")
        if model.card in seen:
            problems.append(f"{source}:{line_of(root, loc) or '?'}: {format_loc(loc)}: "
                            f"model {model.card!r} is listed twice")
        seen.add(model.card)
    return problems


def load_config(path: str | Path | None, known_cards: set[str] | None = None) -> GatewayConfig:
    if path is None:
        return GatewayConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"{p}: cannot read: {exc.strerror}"]) from exc
    return parse_config(text, str(p), known_cards)
