"""Simulated ``vllm serve`` (protocols.md section 2).

Differences from OpenAI that a gateway must handle and that this reproduces:
integer ``code`` in error bodies (and the older flat ``object: "error"`` shape),
``{"error": "Unauthorized"}`` (a bare string) for a bad ``--api-key``,
``stream_options`` present => usage on by default, ``/health`` and Prometheus
``/metrics``, vLLM extras such as ``continue_final_message``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

from tests.sim.openai_sim import OpenAISim
from tests.sim.text import Plan, canonical_reply, content_text, continuation
from tests.sim.wire import sse_data

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError",
          501: "NotImplementedError", 503: "ServiceUnavailableError"}


def _type_for(status: int) -> str:
    """vLLM's error ``type``: its class-like names, else the HTTP phrase (as its HTTPException handler)."""
    if status in _TYPES:
        return _TYPES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "InternalServerError" if status >= 500 else "BadRequestError"


class VLLMSim(OpenAISim):
    """vLLM's OpenAI-compatible server; set ``healthy``, ``waiting``, ``running``, ``kv_cache_usage``."""

    def __init__(
        self, name: str = "vllm", port: int = 0, *, model_name: str = "vllm-model", api_key: str | None = None,
        strict_model: bool = False, old_error_shape: bool = False, legacy_kv_metric: bool = False,
        max_model_len: int = 4096,
    ) -> None:
        super().__init__(name, port, model_name=model_name, api_key=api_key, strict_model=strict_model)
        self.old_error_shape = old_error_shape
        self.legacy_kv_metric = legacy_kv_metric  # expose only vllm:gpu_cache_usage_perc
        self.max_model_len = max_model_len
        self.healthy = True
        self.waiting = 0
        self.running: int | None = None  # None: report the live number of in-flight model requests
        self.kv_cache_usage = 0.0
        self.refuse_prefill = False  # answer `continue_final_message` with a 400, as a model whose template cannot
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_finished = 0

    def add_routes(self, app: web.Application) -> None:
        super().add_routes(app)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)

    # ------------------------------------------------------------ errors
    def error(self, status: int, message: str | None = None, *, err_type: str | None = None,
              code: str | None = None, param: str | None = None) -> web.Response:
        """vLLM's error body: ``code`` is the integer HTTP status (``code`` argument ignored)."""
        return web.json_response(self._error_body(status, message, param), status=status)

    def _error_body(self, status: int, message: str | None, param: str | None = None) -> dict[str, Any]:
        if not message:
            message = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else f"Error {status}"
        info = {"message": message, "type": _type_for(status), "param": param, "code": status}
        return {"object": "error", **info} if self.old_error_shape else {"error": info}

    def auth_error(self) -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)

    def context_error(self, window: int, used: int) -> web.Response:
        """vLLM's wording (its integer code says nothing more than 400)."""
        return self.error(400, f"This model's maximum context length is {window} tokens. However, your request "
                          f"has {used} input tokens. Please reduce the length of the input messages.")

    def authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return self.api_key is None or (scheme.lower() == "bearer" and token == self.api_key)

    def in_band_error(self, message: str | None) -> bytes:
        return sse_data(self._error_body(500, message or "EngineCore encountered an issue."))

    # ------------------------------------------------------------- hooks
    def validate_chat(self, body: dict[str, Any]) -> web.Response | None:
        if body.get("continue_final_message") and body.get("add_generation_prompt"):
            return self.error(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        if self.refuse_prefill and body.get("continue_final_message"):
            return self.error(400, "continue_final_message is not supported by this model's chat template "
                              "(the final assistant message cannot be continued).")
        return None

    def reply_text(self, body: dict[str, Any]) -> str:
        """Continue a trailing assistant message when ``continue_final_message`` is true."""
        messages = body["messages"]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        if body.get("continue_final_message") and last.get("role") == "assistant":
            return continuation(messages, content_text(last.get("content")))
        return canonical_reply(messages)

    def include_usage(self, body: dict[str, Any]) -> bool:
        opts = body.get("stream_options")
        return isinstance(opts, dict) and bool(opts.get("include_usage", True))

    def choice_extra(self, plan: Plan) -> dict[str, Any]:
        return {"stop_reason": plan.stop_sequence}

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": 1700000000, "owned_by": "vllm",
                "root": self.model_name, "parent": None, "max_model_len": self.max_model_len,
                "permission": [{"id": "modelperm-sim", "object": "model_permission", "created": 1700000000,
                                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                                "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                                "organization": "*", "group": None, "is_blocking": False}]}

    async def _answer(self, request: web.Request, body: dict[str, Any], fault: Any, plan: Plan,
                      ptoks: int, chat: bool) -> web.StreamResponse:
        resp = await super()._answer(request, body, fault, plan, ptoks, chat)
        self.prompt_tokens_total += ptoks
        self.generation_tokens_total += len(plan.pieces)
        self.requests_finished += 1
        return resp

    # ------------------------------------------------------- operational
    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")

    def metrics_text(self) -> str:
        """Prometheus text exposition in vLLM's metric names and labels."""
        lbl = f'model_name="{self.model_name}",engine="0"'
        running = self.inflight if self.running is None else self.running
        kv_name, kv_help = (("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.")
                            if self.legacy_kv_metric else
                            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."))
        out: list[str] = []

        def metric(name: str, kind: str, doc: str, samples: list[tuple[str, str, float]]) -> None:
            out.append(f"# HELP {name} {doc}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{suffix}{{{lbl}{extra}}} {float(v)!r}" for suffix, extra, v in samples)

        metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
               [("", "", running)])
        metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
               [("", "", self.waiting)])
        metric(kv_name, "gauge", kv_help, [("", "", self.kv_cache_usage)])
        metric("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
               [("", "", self.prompt_tokens_total)])
        metric("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.",
               [("", "", self.generation_tokens_total)])
        done = self.requests_finished
        metric("vllm:e2e_request_latency_seconds", "histogram", "Histogram of e2e request latency in seconds.",
               [("_bucket", f',le="{le}"', done) for le in ("0.3", "1.0", "5.0", "+Inf")]
               + [("_count", "", done), ("_sum", "", round(done * 0.05, 6))])
        return "\n".join(out) + "\n"
