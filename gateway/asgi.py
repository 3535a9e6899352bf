"""The app factory for multi-worker serving (`llm-gateway serve --workers N`).

uvicorn starts each worker in a fresh process, so everything comes from the
environment the CLI prepared: the config path, the Redis URL,
PROMETHEUS_MULTIPROC_DIR for metrics shared across workers, and the control
socket of the parent's engine supervisor (`LLM_GATEWAY_ENGINE_CONTROL`), so
that every worker uses the same local engine processes.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

CONFIG_ENV = "LLM_GATEWAY_CONFIG"
REDIS_ENV = "LLM_GATEWAY_REDIS_URL"


def create() -> FastAPI:
    from backends.model_cards import load_cards
    from gateway.app import create_app
    from gateway.logsetup import configure
    from routing.config_file import load_config

    path = os.environ.get(CONFIG_ENV) or None
    cards_dir = os.environ.get("LLM_GATEWAY_MODEL_CARDS_DIR")
    cards = load_cards(Path(cards_dir) if cards_dir else None)
    config = load_config(path, known_cards=set(cards))
    configure(os.environ.get("LLM_GATEWAY_LOG_LEVEL") or config.server.log_level, config.logging.json_requests)
    return create_app(config, cards, config_path=path, redis_url=os.environ.get(REDIS_ENV) or None)
