"""Assemble the FastAPI app: the routing runtime, routes, middleware and error handlers.

Models load once, in the lifespan, as a background task: the server accepts
connections at once (so `/health` and `/ready` answer during a long load),
and `/ready` turns 200 only when every required backend is loaded and warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp

from backends.llamacpp.control import EngineControl, LocalControl, RemoteControl
from backends.model_cards import ModelCard, load_cards
from gateway import __version__, connection_guard, docs_pages, observe, request_log, tracing
from gateway.batches.state import BatchesState
from gateway.console import routes as console_routes
from gateway.cors import with_cors
from gateway.drain import Drain
from gateway.error_handlers import install_error_handlers
from gateway.exposure import Exposure
from gateway.fast_lane import FastLane
from gateway.flushing import flush_periodically
from gateway.gc_tuning import tune_for_serving
from gateway.middleware import RequestContextMiddleware
from gateway.openapi_doc import openapi_document
from gateway.routes import admin, admin_config, admin_cost, admin_keys, files, health, messages, openai, responses
from gateway.routes import batches as batch_routes
from gateway.services import Services
from gateway.settings import ENV_ADMIN_KEY, ENV_MASTER_KEY, Settings
from routing.config import GatewayConfig
from routing.config_env import resolve as resolve_secret
from routing.manager import RuntimeManager

log = logging.getLogger("llm_gateway")

# The model endpoints: plain Starlette routes that the fast lane dispatches before FastAPI's stack.
HOT_ROUTES = [*openai.hot_routes, *responses.hot_routes, *messages.hot_routes]


def redis_url_for(config: GatewayConfig, settings: Settings, override: str | None = None) -> str | None:
    """--redis-url, then the environment (LLM_GATEWAY_REDIS_URL, REDIS_URL), then the config file; none
    means in-process stores."""
    return override or settings.redis_url or resolve_secret(config.redis.url) or None


def engine_control(settings: Settings) -> EngineControl:
    """The parent of `--workers N` supervises the engines and says where (its control socket); a lone
    gateway supervises its own."""
    return RemoteControl(settings.engine_control) if settings.engine_control else LocalControl()


def create_app(config: GatewayConfig, cards: dict[str, ModelCard] | None = None,
               config_path: str | None = None, redis_url: str | None = None,
               settings: Settings | None = None) -> FastAPI:
    """The app for one worker. `settings` defaults to this process's environment, read now, once."""
    settings = settings or Settings.from_env()
    if cards is None:
        cards_dir = Path(config.server.model_cards_dir) if config.server.model_cards_dir else None
        cards = load_cards(cards_dir)
    tracing.setup_from_env()
    observe.own_secrets(settings.master_key, settings.admin_key)
    manager = RuntimeManager(config, cards, config_path, control=engine_control(settings))
    services = Services.build(config, redis_url_for(config, settings, redis_url), settings)
    batches = BatchesState.build(config, services, manager)
    drain = Drain(config.server.drain_timeout_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        await services.check_redis_memory()  # warnings only: a policy that evicts keys, a cache without bounds
        tune_for_serving()
        flusher = asyncio.create_task(
            flush_periodically([services.usage.flush, services.limiter.flush], config.usage.flush_interval_s,
                               services.link.record_error), name="usage-flush")
        batch_loop = (asyncio.create_task(batches.runner.run_forever(), name="batch-runner")
                      if config.batches.enabled else None)
        grpc_server = None
        if config.server.grpc.enabled:  # imports grpc only now: the HTTP gateway runs without it
            from gateway.grpc_api.server import GrpcServer

            grpc_server = GrpcServer(app, config.server.grpc, config.server.max_body_bytes)
            await grpc_server.start()
            drain.on_begin(lambda: grpc_server.begin_stop(drain.left_s()))
        drain.hook_signals(asyncio.get_running_loop())
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(drain.left_s())
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            if batch_loop is not None:
                batch_loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await batch_loop
                await batches.runner.aclose()
            await manager.aclose()
            await services.aclose()
            request_log.flush()
            if settings.metrics_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())

    app = GatewayApp(title="llm-gateway", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                     openapi_url=None)  # served by routes/health.py, behind the admin key when keys are on
    app.max_body_bytes = config.server.max_body_bytes
    app.max_json_depth = config.server.max_json_depth
    app.server_config = config.server
    app.settings = settings
    connection_guard.configure(config.server.header_timeout_s, config.server.max_connections)
    app.state.cards = cards
    app.state.manager = manager
    app.state.services = services
    app.state.batches = batches
    app.state.drain = drain
    app.max_upload_bytes = config.batches.max_file_bytes + 1024 * 1024  # the multipart framing around a file
    app.include_router(health.router)
    app.router.routes.extend([*HOT_ROUTES, *responses.routes])
    if config.batches.enabled:
        app.router.routes.extend([*files.routes, *batch_routes.routes])
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(admin_config.router)
    app.include_router(admin_keys.router)
    app.include_router(admin_cost.router)
    if config.server.console.enabled:
        app.include_router(console_routes.router)
        if not settings.admin_keys:
            log.warning("server.console is on but the admin API is off (no %s or %s): nobody can log in",
                        ENV_ADMIN_KEY, ENV_MASTER_KEY)
    if config.server.docs:
        app.include_router(docs_pages.router)
        if settings.auth_enabled and not config.server.public_openapi:
            log.warning("server.docs is on but /openapi.json needs the admin key: the pages cannot load it "
                        "(set server.public_openapi: true)")
    install_error_handlers(app)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


class GatewayApp(FastAPI):
    """FastAPI, with the request-context middleware and the fast lane in front of its whole stack, and CORS
    in front of those when `server.cors` is set."""

    def server_public(self, what: str) -> bool:
        """Is `/metrics` ("metrics") or `/openapi.json` ("openapi") open to callers without the admin key?"""
        return bool(self.server_config is not None and getattr(self.server_config, f"public_{what}"))

    max_body_bytes: int = 4 * 1024 * 1024
    max_upload_bytes: int = 201 * 1024 * 1024  # POST /v1/files only
    max_json_depth: int = 64
    server_config: Any = None  # routing.config.ServerConfig
    settings: Settings = Settings()

    def build_middleware_stack(self) -> ASGIApp:
        full = super().build_middleware_stack()
        lane = FastLane(full, {route.path: route.endpoint for route in HOT_ROUTES})
        server = self.server_config
        exposure = None
        if server is not None and not self.settings.auth_enabled:
            # Without keys the CLI serves loopback only, unless told otherwise: then the Host check is moot.
            exposure = Exposure(server.allowed_hosts,
                                check_host=not (self.settings.allow_unauthenticated or server.allow_unauthenticated))
        context = RequestContextMiddleware(lane, max_body_bytes=self.max_body_bytes,
                                           upload_limits={"/v1/files": self.max_upload_bytes},
                                           body_timeout_s=server.body_timeout_s if server else 60.0,
                                           body_idle_timeout_s=server.body_idle_timeout_s if server else 15.0,
                                           exposure=exposure)
        # Outermost, and only when configured (gateway/cors.py): preflights never reach the key check.
        return with_cors(context, server.cors if server is not None else None)
