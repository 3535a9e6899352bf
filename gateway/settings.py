"""What the gateway reads from its environment, read once at start-up, and the config and model cards
every command starts from.

The HTTP layer never reads `os.environ` while serving: `Settings.from_env()` runs once per worker (in
`create_app`), and the services hold the result. The names are listed here, once.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, get_args

from backends.llamacpp.control import CONTROL_ENV as ENV_ENGINE_CONTROL
from backends.model_cards import ModelCard, ModelCardError, default_cards_dir, load_cards
from routing.config import ConfigError, GatewayConfig, LoggingConfig
from routing.config_file import load_config

ENV_CONFIG = "LLM_GATEWAY_CONFIG"
ENV_HOST = "LLM_GATEWAY_HOST"
ENV_PORT = "LLM_GATEWAY_PORT"
ENV_LOG_LEVEL = "LLM_GATEWAY_LOG_LEVEL"
ENV_LOG_FORMAT = "LLM_GATEWAY_LOG_FORMAT"  # over `logging.format`, as ENV_LOG_LEVEL is over `server.log_level`
ENV_CARDS = "LLM_GATEWAY_MODEL_CARDS_DIR"
ENV_MASTER_KEY = "LLM_GATEWAY_MASTER_KEY"  # turns auth on; also an admin key
ENV_ADMIN_KEY = "LLM_GATEWAY_ADMIN_KEY"  # the admin API's key, when it is not the master key
ENV_ALLOW_UNAUTHENTICATED = "LLM_GATEWAY_ALLOW_UNAUTHENTICATED"  # `serve --allow-unauthenticated`, inherited
ENV_REDIS_URL = "LLM_GATEWAY_REDIS_URL"  # `serve --redis-url`, for its workers
ENV_REDIS_URL_PLAIN = "REDIS_URL"  # the usual name, below --redis-url and above the config file
ENV_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own: metrics shared across workers
LOG_FORMATS = get_args(LoggingConfig.model_fields["format"].annotation)  # ("text", "json")
__all__ = ["ENV_ENGINE_CONTROL", "Settings", "cards_dir", "load_config_and_cards", "log_format"]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    """The environment's part of the gateway's settings (the config file has the rest)."""

    master_key: str | None = None
    admin_key: str | None = None
    allow_unauthenticated: bool = False
    redis_url: str | None = None
    engine_control: str | None = None  # the parent supervisor's control socket (`--workers N`)
    metrics_dir: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        return cls(master_key=env.get(ENV_MASTER_KEY) or None, admin_key=env.get(ENV_ADMIN_KEY) or None,
                   allow_unauthenticated=_truthy(env.get(ENV_ALLOW_UNAUTHENTICATED)),
                   redis_url=env.get(ENV_REDIS_URL) or env.get(ENV_REDIS_URL_PLAIN) or None,
                   engine_control=env.get(ENV_ENGINE_CONTROL) or None, metrics_dir=env.get(ENV_METRICS_DIR) or None)

    @property
    def auth_enabled(self) -> bool:
        """Keys are on when there is a master key; without one every caller is anonymous."""
        return bool(self.master_key)

    @property
    def admin_keys(self) -> tuple[str, ...]:
        """What the admin API accepts: the admin key and the master key."""
        return tuple(k for k in (self.admin_key, self.master_key) if k)

    def __repr__(self) -> str:  # never the keys themselves, should settings ever be logged
        return (f"Settings(auth_enabled={self.auth_enabled}, admin_key={'set' if self.admin_key else None}, "
                f"allow_unauthenticated={self.allow_unauthenticated}, redis_url={'set' if self.redis_url else None})")


def log_format(config: GatewayConfig, env: Mapping[str, str] | None = None) -> str:
    """The event lines' format: LLM_GATEWAY_LOG_FORMAT when set, else `logging.format`. A value that is neither
    "text" nor "json" is a ValueError saying so (the CLI exits 2 with it), never a silent fallback."""
    env = os.environ if env is None else env
    value = env.get(ENV_LOG_FORMAT, "").strip().lower()
    if not value:
        return config.logging.format
    if value not in LOG_FORMATS:
        raise ValueError(f"{ENV_LOG_FORMAT} must be 'text' or 'json', not {value!r}")
    return value


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
