"""The gateway's YAML config: server settings, local models, upstream providers, deployments and routes.

This module owns the schema's root and turns every mistake into a `file:line: field: message` line, so
`llm-gateway check` and a refused hot reload point at the exact place to fix. The sections live in
routing/config_server.py, config_upstreams.py, config_routes.py and config_services.py, and are re-exported
here; every field carries its `description`, from which deploy/SETTINGS.md is generated
(`python -m gateway.settings_reference`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from backends.llamacpp.settings import LlamaCppModelConfig
from routing.config_base import _Strict
from routing.config_routes import (
    BreakerConfig,
    Condition,
    HealthCheckConfig,
    LastResort,
    PriorityLabel,
    RetryPolicy,
    RouteCache,
    RouteConfig,
    RouteLimits,
    Rule,
    Strategy,
    Timeouts,
)
from routing.config_server import GATEWAY_RESPONSE_HEADERS, SDK_REQUEST_HEADERS, CorsConfig, GrpcConfig, ServerConfig
from routing.config_services import (
    BatchesConfig,
    CacheConfig,
    CostConfig,
    LoggingConfig,
    RedisConfig,
    ResponsesConfig,
    SelfHostingOption,
    UsageConfig,
)
from routing.config_upstreams import DeploymentConfig, ProviderConfig, StreamDeadlines

__all__ = [
    "GATEWAY_RESPONSE_HEADERS", "SDK_REQUEST_HEADERS", "BatchesConfig", "BreakerConfig", "CacheConfig", "Condition",
    "ConfigError", "CorsConfig", "CostConfig", "DeploymentConfig", "GatewayConfig", "GrpcConfig",
    "HealthCheckConfig", "LastResort", "LlamaCppModelConfig", "LoggingConfig", "PriorityLabel", "ProviderConfig",
    "RedisConfig", "ResponsesConfig", "RetryPolicy", "RouteCache", "RouteConfig", "RouteLimits", "Rule",
    "SelfHostingOption", "ServerConfig", "Strategy", "StreamDeadlines", "Timeouts", "UsageConfig",
]


def _default_models() -> list[LlamaCppModelConfig]:
    return [LlamaCppModelConfig(card="gemma-3-270m"),
            # /v1/embeddings out of the box; not needed for /ready (chat is the point)
            LlamaCppModelConfig(card="all-minilm-l6-v2", required=False)]


class GatewayConfig(_Strict):
    """The whole config file. With no `models` key, a config that defines no routes serves the embedded
    default model; one that defines routes or deployments serves only what it names."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="The HTTP server (read at start-up).")
    models: list[LlamaCppModelConfig] = Field(
        default_factory=_default_models,
        description="Local llama.cpp models. Unset: the embedded chat model and embedding model, unless the file "
                    "defines routes or deployments (then none).")
    providers: dict[str, ProviderConfig] = Field(default_factory=dict, description="Upstream endpoints, by the "
                                                                                   "name deployments use.")
    deployments: list[DeploymentConfig] = Field(default_factory=list, description="Models at providers (or local "
                                                                                  "ones) that routes send "
                                                                                  "traffic to.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Model names clients send, and where "
                                                                        "they go. None: every local model is "
                                                                        "its own route.")
    default_route: str | None = Field(default=None, description="The route for model names no route claims.")
    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Every deployment's circuit "
                                                                              "breaker.")
    health_checks: HealthCheckConfig = Field(default_factory=HealthCheckConfig, description="Background health "
                                                                                            "checks of "
                                                                                            "providers.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Redis for shared state; unset: "
                                                                        "in-process stores.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="The response cache as a whole.")
    usage: UsageConfig = Field(default_factory=UsageConfig, description="Token estimates and usage counting.")
    cost: CostConfig = Field(default_factory=CostConfig, description="Inputs of `llm-gateway cost`.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Request and event log lines.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="The Responses API's "
                                                                                    "stored responses.")
    batches: BatchesConfig = Field(default_factory=BatchesConfig, description="The Files and Batch APIs.")

    @model_validator(mode="before")
    @classmethod
    def _no_implicit_model_with_routes(cls, data: Any) -> Any:
        return explicit_models(data) if isinstance(data, dict) else data


def explicit_models(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with `models: []` when it defines routes or deployments and names no models (no default model)."""
    if "models" not in data and (data.get("routes") or data.get("deployments")):
        return {**data, "models": []}
    return data


class ConfigError(ValueError):
    """A config that cannot be used. `problems` holds one line-numbered message each.

    `usable` is what did validate, when something did (the whole config, or the parts that passed the schema),
    and `model_index` the file's index of each of its models (None: the same): so that the checks made outside
    the file (weights, secrets: `llm-gateway check`) still run in the same round."""

    def __init__(self, source: str, problems: list[str], usable: "GatewayConfig | None" = None,
                 model_index: list[int] | None = None):
        self.source = source
        self.problems = problems
        self.usable = usable
        self.model_index = model_index
        super().__init__("\n".join(problems))
