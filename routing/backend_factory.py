"""The one place that maps the config onto concrete backend classes.

Everything else in routing (and above it) sees only `backends.base.Backend`; a new provider kind is a
new branch here and a module or folder of its own in `backends/`.
"""

from __future__ import annotations

from backends.anthropic.backend import AnthropicBackend
from backends.azure import AzureOpenAIBackend
from backends.base import Backend
from backends.http import PoolSettings, UpstreamPool
from backends.llamacpp.backend import LlamaCppBackend
from backends.llamacpp.control import EngineControl
from backends.llamacpp.embeddings import LlamaEmbeddingBackend
from backends.llamacpp.settings import LlamaCppModelConfig
from backends.model_cards import ModelCard
from backends.openai_compat import OpenAICompatBackend
from backends.vllm import VLLMBackend
from routing.config import DeploymentConfig, ProviderConfig
from routing.config_env import resolve as resolve_secret
from routing.upstream_headers import merged as merged_headers


def local_backend(model: LlamaCppModelConfig, card: ModelCard, control: EngineControl | None) -> Backend:
    """A llama.cpp model; `control` runs its engine processes (None: the backend supervises its own).
    An embedding model (its card says so) is served by the embedding backend instead."""
    if card.capabilities == ["embeddings"]:
        return LlamaEmbeddingBackend(model.card, card, model, control=control)
    return LlamaCppBackend(model.card, card, model, control=control)


def upstream_pool(provider: ProviderConfig) -> UpstreamPool:
    """The connection pool a provider's deployments share."""
    return UpstreamPool(PoolSettings(max_connections=provider.max_connections,
                                     connect_timeout_s=provider.connect_timeout_s,
                                     read_timeout_s=provider.read_timeout_s))


def remote_backend(dep: DeploymentConfig, provider: ProviderConfig, pool: UpstreamPool,
                   card: ModelCard | None) -> Backend:
    """A deployment on a vLLM server, Anthropic, Azure OpenAI, or any OpenAI-compatible service, sending its
    provider's and its own `headers` with every request."""
    key = resolve_secret(provider.api_key)
    headers = merged_headers(provider, dep)
    if provider.kind == "vllm":
        return VLLMBackend(dep.name, card, base_url=provider.base_url, model=dep.model, api_key=key, pool=pool,
                           health_path=provider.health_path or "/health",
                           metrics_path=provider.metrics_path or "/metrics", headers=headers)
    if provider.kind == "anthropic":
        return AnthropicBackend(dep.name, card, base_url=provider.base_url, model=dep.model, api_key=key, pool=pool,
                                default_max_tokens=provider.default_max_tokens,
                                anthropic_version=provider.anthropic_version, headers=headers)
    if provider.kind == "azure":
        return AzureOpenAIBackend(dep.name, card, base_url=provider.base_url, model=dep.model, api_key=key,
                                  pool=pool, health_path=provider.health_path, headers=headers,
                                  api_version=provider.api_version)
    return OpenAICompatBackend(dep.name, card, base_url=provider.base_url, model=dep.model, api_key=key, pool=pool,
                               health_path=provider.health_path, headers=headers)
