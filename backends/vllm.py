"""A vLLM server: OpenAI-compatible, plus health, load metrics, extra sampling parameters and continuation.

Everything the client sends passes through (vLLM accepts its own extras such
as `top_k`, `min_p`, `repetition_penalty` and `structured_outputs`, and
ignores what it does not know).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from backends.base import CallContext
from backends.contract.protocol import ChatCompletionRequest
from backends.openai_compat import OpenAICompatBackend

LOAD_METRICS = ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc")


def parse_metrics(text: str, wanted: tuple[str, ...] = LOAD_METRICS) -> dict[str, float]:
    """Sum the samples of the wanted metrics from Prometheus text (over engines and models)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in wanted:
            continue
        try:
            value = float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        out[name] = out.get(name, 0.0) + value
    return out


class VLLMBackend(OpenAICompatBackend):
    kind = "vllm"
    supports_continuation = True

    def __init__(self, *args: Any, metrics_path: str | None = "/metrics", **kwargs: Any) -> None:
        kwargs.setdefault("health_path", "/health")
        super().__init__(*args, **kwargs)
        # /health and /metrics live at the server root, not under /v1.
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.metrics_path = metrics_path
        self.waiting = 0.0
        self.running = 0.0
        self.kv_cache_usage = 0.0

    async def probe(self) -> bool:
        healthy = await self._get_ok(self.root_url + (self.health_path or "/health"))
        if healthy and self.metrics_path:
            await self.scrape()
        return healthy

    async def scrape(self) -> None:
        try:
            async with self.pool.session.get(self.root_url + self.metrics_path,
                                             timeout=aiohttp.ClientTimeout(total=self.pool.settings.connect_timeout_s)) as r:
                if r.status != 200:
                    return
                metrics = parse_metrics(await r.text())
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return
        self.waiting = metrics.get("vllm:num_requests_waiting", 0.0)
        self.running = metrics.get("vllm:num_requests_running", 0.0)
        # kv_cache_usage_perc replaced the deprecated gpu_cache_usage_perc; read either.
        self.kv_cache_usage = metrics.get("vllm:kv_cache_usage_perc", metrics.get("vllm:gpu_cache_usage_perc", 0.0))

    def load_score(self) -> float:
        """Queued requests dominate; KV-cache pressure (0..1) and running requests break ties."""
        return self.waiting + self.kv_cache_usage + 0.01 * self.running

    def load_snapshot(self) -> dict[str, float]:
        return {"waiting": self.waiting, "running": self.running, "kv_cache_usage": self.kv_cache_usage}

    def chat_body(self, request: ChatCompletionRequest, ctx: CallContext, stream: bool) -> dict[str, Any]:
        body = self.build_body(request, ctx, stream)
        if ctx.continue_from:
            # vLLM continues a trailing assistant message instead of starting a new turn.
            body["messages"] = [*body["messages"], {"role": "assistant", "content": ctx.continue_from}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        return body
