"""The gRPC server of one gateway worker: ChatService, grpc.health.v1.Health and server reflection,
started in the app's lifespan when `server.grpc.enabled` (grpc is imported only then)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

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


class GrpcServer:
    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.address = app, f"{host}:{port}"
        self.server: Any = None
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from gateway.grpc_api.codegen import load
        from gateway.grpc_api.servicer import ChatServicer

        pb2, pb2_grpc = load()
        self._health_pb2 = health_pb2
        self.server = grpc.aio.server()
        pb2_grpc.add_ChatServiceServicer_to_server(ChatServicer(self.app, pb2), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (pb2.DESCRIPTOR.services_by_name["ChatService"].full_name, health.SERVICE_NAME,
                 reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        if self.server.add_insecure_port(self.address) == 0:
            raise RuntimeError(f"server.grpc: cannot listen on {self.address}")
        await self.server.start()
        await self._refresh()
        self._refresher = asyncio.create_task(self._refresh_forever(), name="grpc-health")
        log.info("gRPC API listening on %s", self.address)

    async def _refresh(self) -> None:
        pb = self._health_pb2.HealthCheckResponse
        await self.health.set("", pb.SERVING)
        for name, ok in route_health(self.app).items():
            await self.health.set(name, pb.SERVING if ok else pb.NOT_SERVING)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_REFRESH_S)
            try:
                await self._refresh()
            except Exception:  # a reload mid-read: the next round sets it
                log.exception("grpc health refresh failed")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self.server is not None:
            await self.server.stop(grace=2.0)
