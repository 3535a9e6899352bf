"""What the gateway reads from its environment, and the config and model cards every command starts from."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from backends.model_cards import ModelCard, ModelCardError, default_cards_dir, load_cards
from routing.config import ConfigError, GatewayConfig
from routing.config_file import load_config

ENV_CONFIG = "LLM_GATEWAY_CONFIG"
ENV_HOST = "LLM_GATEWAY_HOST"
ENV_PORT = "LLM_GATEWAY_PORT"
ENV_LOG_LEVEL = "LLM_GATEWAY_LOG_LEVEL"
ENV_CARDS = "LLM_GATEWAY_MODEL_CARDS_DIR"


def cards_dir(config: GatewayConfig | None = None) -> Path:
    env = os.environ.get(ENV_CARDS)
    if env:
        return Path(env)
    if config is not None and config.server.model_cards_dir:
        return Path(config.server.model_cards_dir)
    return default_cards_dir()


def load_config_and_cards(config_path: str | None) -> tuple[GatewayConfig, dict[str, ModelCard]]:
    """Config and cards, or exit 2 with line-numbered messages."""
    try:
        cards = load_cards(cards_dir())
        config = load_config(config_path, known_cards=set(cards))
        if config.server.model_cards_dir and not os.environ.get(ENV_CARDS):
            cards = load_cards(Path(config.server.model_cards_dir))
            config = load_config(config_path, known_cards=set(cards))
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        raise SystemExit(2)
    except ModelCardError as exc:
        print(f"model card error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    return config, cards
