"""The gRPC server of one gateway worker: ChatService, CompletionService, EmbeddingService,
grpc.health.v1.Health (per model) and server reflection, started in the app's lifespan when
`server.grpc.enabled` (grpc is imported only then)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from gateway.grpc_api.gate import Gate
from routing.config import GrpcConfig

log = logging.getLogger("llm_gateway")
HEALTH_REFRESH_S = 2.0


def route_health(app: Any) -> dict[str, bool]:
    """Per route (model) name: does it have a usable deployment now (what /ready counts)?"""
    runtime = app.state.manager.current
    out = {}
    for route in runtime.route_list:
        usable = any(d.healthy and d.backend.status().state == "ready" for d in route.deployments)
        out[route.name] = usable or route.config.last_resort is not None
    return out


def credentials(cfg: GrpcConfig) -> Any:
    """Server TLS credentials from the configured PEM files (None: plaintext)."""
    import grpc

    if cfg.tls_cert_file is None or cfg.tls_key_file is None:
        return None
    try:
        pair = (Path(cfg.tls_key_file).read_bytes(), Path(cfg.tls_cert_file).read_bytes())
        client_ca = Path(cfg.tls_client_ca_file).read_bytes() if cfg.tls_client_ca_file else None
    except OSError as exc:
        raise RuntimeError(f"server.grpc: cannot read a TLS file: {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


class GrpcServer:
    def __init__(self, app: Any, cfg: GrpcConfig, max_message_bytes: int) -> None:
        self.app, self.cfg, self.address = app, cfg, f"{cfg.host}:{cfg.port}"
        # A message is bounded as an HTTP body is (server.max_body_bytes); grpc's own default is 4 MiB.
        self.options = [("grpc.max_receive_message_length", max_message_bytes)]
        self.server: Any = None
        self._refresher: asyncio.Task[None] | None = None
        self._routes: set[str] = set()
        self._stopping: asyncio.Future[None] | None = None
        self.gate = Gate()  # the gateway's calls in flight, what a drain waits for

    async def start(self) -> None:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from gateway.grpc_api.servicer import SERVICERS
        from gateway.grpc_api.stubs import load

        stubs = load()
        self._health_pb2 = health_pb2
        self.server = grpc.aio.server(options=self.options)
        for name, servicer in SERVICERS.items():
            stubs.services[name].add_to_server(servicer(self.app, stubs.pb, self.gate), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = [stubs.services[name].full_name for name in SERVICERS]
        reflection.enable_server_reflection((*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.server)
        creds = credentials(self.cfg)
        bound = (self.server.add_secure_port(self.address, creds) if creds is not None
                 else self.server.add_insecure_port(self.address))
        if bound == 0:
            raise RuntimeError(f"server.grpc: cannot listen on {self.address}")
        await self.server.start()
        await self._refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="grpc-health")
        log.info("gRPC API listening on %s (%s)", self.address, "TLS" if creds is not None else "plaintext")

    async def _refresh(self) -> None:
        """"" and each service: the gateway serves; each route (model) name: it has a usable deployment."""
        pb = self._health_pb2.HealthCheckResponse
        for name in ("", *self.service_names):
            await self.health.set(name, pb.SERVING)
        routes = route_health(self.app)
        for name, ok in routes.items():
            await self.health.set(name, pb.SERVING if ok else pb.NOT_SERVING)
        for gone in self._routes - routes.keys():  # removed by a reload: health has no "remove"
            await self.health.set(gone, pb.NOT_SERVING)
        self._routes = set(routes)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            try:
                await self._refresh()
            except Exception:  # a reload mid-read: the next round sets it
                log.exception("grpc health refresh failed")

    def begin_stop(self, grace_s: float) -> None:
        """Take no new calls, tell health checkers NOT_SERVING, and give the calls in flight `grace_s`
        (the drain's time: gateway/drain.py); `stop` waits for it. Once; later calls do nothing."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace_s))

    async def stop(self, grace_s: float = 2.0) -> None:
        self.begin_stop(grace_s)
        assert self._stopping is not None
        await self._stopping

    async def _stop(self, grace_s: float) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.server is None:
            return
        with contextlib.suppress(Exception):
            await self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so
        if not await self.gate.close(grace_s):
            log.warning("gRPC drain: %d call(s) still running after %gs are cut", self.gate.active, grace_s)
        await self.server.stop(grace=0)  # what is left: health watches, calls past the drain
