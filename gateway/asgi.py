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


def create() -> FastAPI:
    # Imported here: the parent set PROMETHEUS_MULTIPROC_DIR before this worker started, and the
    # metrics module reads it at import.
    from backends.model_cards import load_cards
    from gateway.app import create_app
    from gateway.logsetup import configure
    from gateway.settings import ENV_CARDS, ENV_CONFIG, ENV_LOG_LEVEL, Settings, log_format
    from routing.config_file import load_config

    path = os.environ.get(ENV_CONFIG) or None
    cards_dir = os.environ.get(ENV_CARDS)
    cards = load_cards(Path(cards_dir) if cards_dir else None)
    config = load_config(path, known_cards=set(cards))
    configure(os.environ.get(ENV_LOG_LEVEL) or config.server.log_level, config.logging.json_requests,
              log_format(config))  # the parent refused a bad LLM_GATEWAY_LOG_FORMAT before any worker started
    return create_app(config, cards, config_path=path, settings=Settings.from_env())
