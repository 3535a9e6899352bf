"""Simulated Azure OpenAI resource: `https://{resource}.openai.azure.com` on 127.0.0.1.

Faithful to what a client of Azure sees (and what differs from OpenAI):
- the classic API at `/openai/deployments/{deployment}/{chat/completions,completions,embeddings}`, which
  needs `?api-version=` (none: 404 `Resource not found`; one Azure does not know: 400 `API version not
  supported`); the deployment is named by the path, and one that does not exist is a 404
  `DeploymentNotFound` (the body's `model` is ignored);
- the v1 API at `/openai/v1/...`, no api-version, the deployment named by the body's `model`;
- the key in an `api-key` header (a wrong or missing one: 401 with Azure's message and a code that is
  the status, "401"); `Authorization: Bearer <token>` instead, when `bearer_token` is set (Entra ID);
- a per-deployment quota of requests per minute (`rpm`): past it, 429 with code "429", Azure's message
  and `Retry-After` / `retry-after-ms`, as a deployment's TPM/RPM quota answers;
- the content filter: a prompt holding `FILTER_WORD` is a 400 with code `content_filter` and the
  `innererror` of `ResponsibleAIPolicyViolation`; answers carry `prompt_filter_results` (a stream, as
  its first event, with no choices, an empty id and model) and each choice `content_filter_results`.

Bodies are otherwise OpenAI's (OpenAISim's answers: the canonical reply, usage, [DONE]).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.sim.openai_sim import OpenAISim
from tests.sim.text import Plan
from tests.sim.wire import BODY, StreamEvent, sse_data

API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2024-12-01-preview", "2025-01-01-preview",
                          "2025-04-01-preview"})
FILTER_WORD = "FORBIDDEN-TOPIC"
_SAFE = {c: {"filtered": False, "severity": "safe"} for c in ("hate", "self_harm", "sexual", "violence")}
_ENDPOINTS = ("/chat/completions", "/completions", "/embeddings")


class _ModelPaths:
    """Which paths are model requests (they take faults and count as in flight): any deployment's."""

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path.startswith("/openai/") and path.endswith(_ENDPOINTS)


class AzureSim(OpenAISim):
    model_paths = _ModelPaths()  # type: ignore[assignment]

    def __init__(self, name: str = "azure", port: int = 0, *, api_key: str | None = "azure-sim-key",
                 deployments: tuple[str, ...] = ("gpt-4o", "embed"), model_name: str = "gpt-4o-2024-08-06") -> None:
        super().__init__(name, port, model_name=model_name, api_key=api_key)
        self.deployments = set(deployments)
        self.bearer_token: str | None = None  # accept `Authorization: Bearer <this>` as well (Entra ID)
        self.rpm: dict[str, int] = {}  # deployment -> its quota of requests per minute (absent: none)
        self.throttled = 0  # 429s sent for a quota
        self._sent: dict[str, deque[float]] = {}

    def add_routes(self, app: web.Application) -> None:
        for endpoint, handler in zip(_ENDPOINTS, (self._chat, self._completions, self._embeddings)):
            app.router.add_post("/openai/deployments/{deployment}" + endpoint, self._classic(handler))
            app.router.add_post("/openai/v1" + endpoint, self._v1(handler))

    def reset(self) -> None:
        self.clear_faults()
        self.clear()
        self.rpm.clear()
        self._sent.clear()
        self.throttled = 0
        self.bearer_token = None

    # ------------------------------------------------------------ errors
    @staticmethod
    def azure_error(http_status: int, code: str, message: str, headers: dict[str, str] | None = None,
                    **extra: Any) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message, **extra}}, status=http_status,
                                 headers=headers)

    def auth_error(self) -> web.Response:
        return self.azure_error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. "
                                "Make sure to provide a valid key for an active subscription and use a correct "
                                "regional API endpoint for your resource.")

    def fault_error(self, code: int, message: str | None) -> web.Response:
        return self.azure_error(code, str(code), message or f"Error {code}")

    def authorized(self, request: web.Request) -> bool:
        if self.bearer_token is not None and request.headers.get("Authorization") == f"Bearer {self.bearer_token}":
            return True
        return self.api_key is None or request.headers.get("api-key") == self.api_key

    # ------------------------------------------------------------- hooks
    def body_extra(self) -> dict[str, Any]:
        return {"prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _SAFE}]}

    def choice_extra(self, plan: Plan) -> dict[str, Any]:
        return {"content_filter_results": _SAFE}

    def stream_prologue(self) -> list[StreamEvent]:
        return [StreamEvent(sse_data({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                      "prompt_filter_results": [{"prompt_index": 0,
                                                                 "content_filter_results": _SAFE}]}))]

    # ---------------------------------------------------------- routing
    def _classic(self, handler: Any) -> Any:
        async def serve(request: web.Request) -> web.StreamResponse:
            version = request.query.get("api-version")
            if version is None:
                return self.azure_error(404, "404", "Resource not found")
            if version not in API_VERSIONS:
                return self.azure_error(400, "BadRequest", "API version not supported")
            return await self._deployment(request, request.match_info["deployment"], handler, version)
        return serve

    def _v1(self, handler: Any) -> Any:
        async def serve(request: web.Request) -> web.StreamResponse:
            body = request[BODY]
            name = body.get("model") if isinstance(body, dict) else None
            return await self._deployment(request, str(name), handler, "v1")
        return serve

    async def _deployment(self, request: web.Request, name: str, handler: Any, version: str) -> web.StreamResponse:
        if not self.authorized(request):
            return self.auth_error()
        if name not in self.deployments:
            return self.azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not exist. "
                                    "If you created the deployment within the last 5 minutes, please wait a "
                                    "moment and try again.")
        over = self._over_quota(name)
        if over is not None:
            self.throttled += 1
            return self.azure_error(429, "429", f"Requests to the ChatCompletions_Create Operation under Azure "
                                    f"OpenAI API version {version} have exceeded call rate limit of your current "
                                    f"OpenAI S0 pricing tier. Please retry after {over} seconds.",
                                    headers={"Retry-After": str(over), "retry-after-ms": str(over * 1000)})
        if self._filtered(request[BODY]):
            return self.azure_error(
                400, "content_filter", "The response was filtered due to the prompt triggering Azure OpenAI's "
                "content management policy. Please modify your prompt and retry.", type=None, param="prompt",
                status=400, innererror={"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    **_SAFE, "violence": {"filtered": True, "severity": "high"}}})
        return await handler(request)

    def _over_quota(self, deployment: str) -> int | None:
        """Seconds until the deployment's quota has room, when it has none now (this request is counted
        only when it is let through, as Azure's limiter does)."""
        limit = self.rpm.get(deployment)
        if limit is None:
            return None
        now = time.monotonic()
        sent = self._sent.setdefault(deployment, deque())
        while sent and sent[0] <= now - 60:
            sent.popleft()
        if len(sent) >= limit:
            return max(1, int(sent[0] + 60 - now + 0.999)) if sent else 60
        sent.append(now)
        return None

    @staticmethod
    def _filtered(body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        parts = [m.get("content") for m in body.get("messages") or () if isinstance(m, dict)]
        parts.append(body.get("prompt"))
        return any(isinstance(p, str) and FILTER_WORD in p for p in parts)
