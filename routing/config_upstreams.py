"""The `providers` and `deployments` sections of the config: upstream endpoints, and the models at them that
routes send traffic to."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from routing.config_base import _Strict

_PROVIDER_HEADERS = (
    "Sent with every request to this provider (OpenAI-Organization, OpenAI-Project, a custom auth header...); "
    "a deployment's own `headers` add to these and override them by name. Values are kept as written "
    "(`${...}` references resolved where used, like api_key) and masked in GET /admin/config.")
_FIRST_TOKEN = (
    "From sending the request to the first chunk with content (text, tool calls, reasoning or a finish; not "
    "the role chunk). Before it nothing reached the client, so a miss fails over invisibly. Streams only: a "
    "non-streamed answer's content is the whole answer (read_s and total_s bound it).")
_CONTINUATION = (
    "How this deployment may go on with a stream another deployment broke off: \"prefill\" (continue the "
    "partial answer: vLLM, Anthropic, local models), \"instruction\" (shown the partial answer as its own and "
    "asked in a user turn to go on; restart if that fails), "
    "\"restart\" (answer afresh; only the part past the client's text is relayed, and only if it begins with "
    "exactly that text), \"auto\" (prefill where the backend can, then restart if the prefill is refused; "
    "restart where it cannot), \"none\" (never asked to continue).")
_RATE_LIMIT_FAILURE = (
    "When Redis cannot be asked, may requests to this deployment skip rate limits (open) or are they refused "
    "(closed)? Open by default: an outage of Redis is not an outage of the gateway.")
_CAP = ("The upstream's quota for this deployment (LiteLLM's rpm/tpm), {what} per minute, counted on every "
        "replica together when the gateway has Redis. A deployment at its cap is skipped (the next one is tried; "
        "none left: 429 with Retry-After), so the upstream never sees a request it would answer with 429.")


class ProviderConfig(_Strict):
    """An upstream endpoint: an OpenAI-compatible API, a vLLM server, Azure OpenAI, or Anthropic."""

    kind: Literal["openai", "vllm", "anthropic", "azure"] = Field(
        description="The upstream's API: an OpenAI-compatible one, vLLM (health and load from its own "
                    "endpoints), Anthropic's Messages API, or Azure OpenAI.")
    base_url: str = Field(pattern=r"^https?://", description="The API's base URL (e.g. https://api.openai.com/v1); "
                                                            "azure: the resource's root, "
                                                            "https://{resource}.openai.azure.com.")
    api_key: str | None = Field(default=None, description="A ${ENV_VAR} or ${file:/path} reference "
                                                          "(routing/config_env.py), never a literal; resolved "
                                                          "where it is used.")
    headers: dict[str, str] = Field(default_factory=dict, description=_PROVIDER_HEADERS)
    api_version: str | None = Field(
        default=None, pattern=r"^(v1|\d{4}-\d{2}-\d{2}(-preview)?)$",
        description="azure only: the `api-version` of the classic deployment URLs (unset: "
                    "backends.azure.DEFAULT_API_VERSION), or \"v1\" for the v1 API (/openai/v1/..., no "
                    "api-version).")
    max_connections: int = Field(default=256, ge=1, description="Connections open at once to this provider.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connecting to the provider.")
    read_timeout_s: float = Field(default=120.0, gt=0, description="Any one socket read from the provider.")
    health_path: str | None = Field(default=None, description="Path probed by the health checks (unset: /health "
                                                              "for vllm, none for the others).")
    metrics_path: str | None = Field(default=None, description="Path of the Prometheus metrics the load is "
                                                               "read from (unset: /metrics for vllm).")
    anthropic_version: str = Field(default="2023-06-01", description="anthropic only: the anthropic-version "
                                                                     "header sent.")
    default_max_tokens: int = Field(default=4096, gt=0, description="anthropic only: max_tokens when a request "
                                                                    "gives none (Anthropic requires it).")


class StreamDeadlines(_Strict):
    """Deadlines of a streamed answer, on top of the socket's `read_s`; unset: only `read_s` applies.

    Both are measured by the router on what the backend relays (keep-alive comments do not count), so a
    provider that sends headers at once and pings while it queues is still cut."""

    first_token_s: float | None = Field(default=None, gt=0, description=_FIRST_TOKEN)
    idle_s: float | None = Field(default=None, gt=0, description="The longest gap between two chunks of a "
                                                                 "stream.")


class DeploymentConfig(_Strict):
    """A model at a backend: what a route sends traffic to."""

    name: str = Field(pattern=r"^[A-Za-z0-9._:-]+$", description="The deployment's name, as routes list it.")
    provider: str = Field(description="A key of `providers`, or \"local\" for a llama.cpp model from `models`.")
    model: str = Field(description="The model name at that provider (for \"local\": the card id; for azure: the "
                                   "Azure deployment).")
    card: str | None = Field(default=None, description="Model card id for the context length, metadata and "
                                                       "prices.")
    params: dict[str, Any] = Field(default_factory=dict, description="Request parameters set on every request "
                                                                     "to it (overriding the client's).")
    weight: float = Field(default=1.0, ge=0, description="Its share of traffic under the weighted strategy "
                                                         "(0: none).")
    context_length: int | None = Field(default=None, gt=0, description="Context window in tokens (unset: the "
                                                                       "card's).")
    cost_per_mtok: float | None = Field(default=None, ge=0, description="Price per million tokens, over the "
                                                                        "card's prices, for the cost strategy.")
    instance_price_per_hour: float | None = Field(
        default=None, ge=0, description="Self-hosted spend: the instance's hourly price, spread over "
                                        "throughput_tokens_per_s.")
    throughput_tokens_per_s: float | None = Field(
        default=None, gt=0, description="Self-hosted spend: the measured throughput (unset: the model card's "
                                        "measured decode speed).")
    rate_limit_failure: Literal["open", "closed"] = Field(default="open", description=_RATE_LIMIT_FAILURE)
    rpm: int | None = Field(default=None, ge=1, description=_CAP.format(what="requests"))
    tpm: int | None = Field(default=None, ge=1, description=_CAP.format(what="tokens"))
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request to it, over its "
                                                                      "provider's `headers` (by name).")
    timeouts: StreamDeadlines = Field(
        default_factory=StreamDeadlines,
        description="This deployment's own stream deadlines (a slow-to-start model, a provider known to "
                    "pause): each value set here overrides the route's for attempts on it.")
    continuation: Literal["auto", "prefill", "instruction", "restart", "none"] = Field(
        default="auto", description=_CONTINUATION)
    max_concurrency: int | None = Field(
        default=None, ge=1, description="The scheduler (routing/scheduler.py): requests served at once from "
                                        "this replica (unset: a local model's engine slots, parallel x "
                                        "instances; no limit for a provider).")
    max_queue: int | None = Field(
        default=None, ge=0, description="Requests that may wait for a slot; a newcomer beyond it gets 503 (or "
                                        "takes the place of a less urgent or less fairly served waiter). Unset: "
                                        "a local model's `max_queue`; no bound for a provider.")
    batch_share: float = Field(default=0.5, gt=0, le=1, description="The share of the slots batch requests may "
                                                                    "hold, so that interactive ones always find "
                                                                    "room.")
    near_real_time_share: float = Field(
        default=1.0, gt=0, le=1, description="The share near-real-time (and batch) requests may hold together; "
                                             "below 1 keeps the rest for interactive requests alone (1: none "
                                             "held back; interactive requests still go first in the queue).")
