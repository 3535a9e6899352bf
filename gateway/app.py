"""Assemble the FastAPI app: backends, routes, middleware and error handlers.

Models load once, in the lifespan, as a background task: the server accepts
connections at once (so `/health` and `/ready` answer during a long load),
and `/ready` turns 200 only when every required backend is loaded and warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI

from backends.base import Backend
from backends.llamacpp import LlamaCppBackend
from gateway import __version__
from gateway.error_handlers import install_error_handlers
from gateway.middleware import RequestContextMiddleware
from gateway.model_cards import ModelCard, load_cards
from gateway.registry import ModelRegistry
from gateway.routes import health, openai
from gateway.weights import Progress
from routing.config import GatewayConfig

log = logging.getLogger("llm_gateway")


def build_backends(config: GatewayConfig, cards: dict[str, ModelCard], progress: Progress | None = None) -> list[Backend]:
    backends: list[Backend] = []
    for model in config.models:
        card = cards[model.card]
        backends.append(LlamaCppBackend(card.id, card, model, progress))
    return backends


def create_app(config: GatewayConfig, cards: dict[str, ModelCard] | None = None) -> FastAPI:
    if cards is None:
        cards_dir = Path(config.server.model_cards_dir) if config.server.model_cards_dir else None
        cards = load_cards(cards_dir)
    backends = build_backends(config, cards)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_start_all(backends), name="load-backends")
        try:
            yield
        finally:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
            await asyncio.gather(*(b.aclose() for b in backends), return_exceptions=True)

    app = FastAPI(title="llm-gateway", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.config = config
    app.state.cards = cards
    app.state.registry = ModelRegistry(backends)
    app.include_router(health.router)
    app.include_router(openai.router)
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.server.max_body_bytes)
    return app


async def _start_all(backends: list[Backend]) -> None:
    """Load models one after another: loading two at once only fights over the same cores."""
    for backend in backends:
        await backend.start()
