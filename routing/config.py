"""The gateway's YAML config: server settings, local models, upstream providers, deployments and routes.

This module owns the schema and turns every mistake into a `file:line: field:
message` line, so `llm-gateway check` and a refused hot reload point at the
exact place to fix.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from backends.llamacpp.settings import LlamaCppModelConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/?#\s]+$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP method or header name (RFC 9110 token)


def _origin(value: str) -> str:
    """An origin is exactly what a browser sends in `Origin`: scheme://host[:port], no path, no slash."""
    if value == "*" or _ORIGIN.match(value):
        return value.lower()
    raise ValueError(f"{value!r} is not an origin: write scheme://host[:port] with no path or trailing slash "
                     "(e.g. https://app.example.com), or '*'")


def _token(value: str) -> str:
    if value == "*" or _TOKEN.match(value):
        return value
    raise ValueError(f"{value!r} is not an HTTP method or header name")


# What the official JS SDKs send from a browser (openai-node and anthropic-sdk-typescript with
# dangerouslyAllowBrowser: their Stainless platform headers, auth, versions), and the gateway's own request
# headers. CORS matches header names exactly (no wildcards), so each one is listed.
SDK_REQUEST_HEADERS = [
    "authorization", "content-type", "accept", "x-api-key", "anthropic-version", "anthropic-beta",
    "anthropic-dangerous-direct-browser-access", "openai-organization", "openai-project", "openai-beta",
    "idempotency-key", "x-stainless-arch", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-retry-count", "x-stainless-timeout",
    "x-stainless-helper-method", "x-stainless-stream-helper", "x-stainless-poll-helper",
    "x-stainless-custom-poll-interval", "x-request-id", "cache-control", "x-gateway-cache-ttl",
    "x-gateway-priority",
]
# The gateway's own response headers a page may read (by default a page sees only the CORS-safelisted ones).
GATEWAY_RESPONSE_HEADERS = [
    "x-request-id", "x-gateway-deployment", "x-gateway-attempts", "x-gateway-overhead-ms", "x-gateway-cache",
    "x-gateway-degraded", "x-gateway-priority", "retry-after", "retry-after-ms", "x-should-retry",
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
]


class CorsConfig(_Strict):
    """Browser clients (gateway/cors.py). Present: on, for the origins listed; absent (the default): off, and no
    CORS code runs at all. Read at start-up: a change needs a restart."""

    allow_origins: list[Annotated[str, AfterValidator(_origin)]] = Field(default_factory=list)
    allow_origin_regex: str | None = None  # e.g. ^https://[a-z0-9-]+\.example\.com$, besides allow_origins
    allow_credentials: bool = False  # cookies / HTTP auth; never with '*'
    allow_methods: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"])
    allow_headers: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: list(SDK_REQUEST_HEADERS))
    expose_headers: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: list(GATEWAY_RESPONSE_HEADERS))
    max_age: int = Field(default=600, ge=0, le=86400)  # seconds a browser may cache a preflight answer
    # Chrome's Private Network Access: may a page on a public origin call this gateway on a private address?
    allow_private_network: bool = False

    @field_validator("allow_origins")
    @classmethod
    def _star_alone(cls, origins: list[str]) -> list[str]:
        if "*" in origins and len(origins) > 1:
            raise ValueError("'*' already allows every origin: list no others beside it")
        return origins

    @field_validator("allow_origin_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return pattern

    @model_validator(mode="after")
    def _some_origin(self) -> "CorsConfig":
        if not self.allow_origins and self.allow_origin_regex is None:
            raise ValueError("cors needs allow_origins (or allow_origin_regex); to turn CORS off, remove 'cors'")
        return self


class GrpcConfig(_Strict):
    """The gRPC API for internal callers (gateway/grpc_api): off unless enabled; read at start-up."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # TLS: a PEM certificate chain and its key (both, or neither: plaintext, for a sidecar or a mesh that
    # does TLS itself). With `tls_client_ca_file` too, callers must present a certificate it signed (mTLS).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_ca_file: str | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> "GrpcConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_json_depth: int = Field(default=64, ge=8, le=200)  # nested arrays/objects in a request body
    # Slow clients (gateway/connection_guard.py): none of these ever cuts a response in progress.
    header_timeout_s: float = Field(default=10.0, gt=0)  # first byte of a request to the end of its headers
    body_timeout_s: float = Field(default=60.0, gt=0)  # the whole request body, once its headers are in
    # On SIGTERM/SIGINT: stop accepting, /ready 503, requests and streams in flight (HTTP and gRPC) get up
    # to this long to finish, then are cut (gateway/drain.py). Read at start-up.
    drain_timeout_s: float = Field(default=120.0, ge=0)
    # /health turns 503 (a liveness probe then restarts the pod) once a required local model has been `failed`
    # this long: its supervisor gave up on it (it cannot load, or crashed loading in safe mode too), so it will
    # not serve in this process again. null: /health stays 200 whatever the models do (gateway/probes.py).
    liveness_failed_after_s: float | None = Field(default=60.0, ge=0)
    body_idle_timeout_s: float = Field(default=15.0, gt=0)  # the longest pause between two pieces of body
    idle_timeout_s: float = Field(default=5.0, gt=0)  # a kept-alive connection with no request
    max_connections: int = Field(default=2048, ge=1)  # open at once, per worker; beyond it: 503
    # Exposure (gateway/exposure.py). With keys on, /metrics and /openapi.json need the admin key unless
    # made public, and /ready shows only its status to others; with keys off, only loopback names may be
    # the Host (DNS rebinding) and POSTs must be JSON (a web page cannot send that without CORS).
    public_metrics: bool = False
    public_openapi: bool = False
    allowed_hosts: list[str] = Field(default_factory=list)  # more Host names accepted while keys are off
    allow_unauthenticated: bool = False  # serve a non-loopback address without a master key (or the flag)
    cors: CorsConfig | None = None  # browser clients; off unless given (read at start-up: restart to change)
    docs: bool = False  # /docs (Swagger UI) and /redoc, served from bundled assets (read at start-up)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    model_cards_dir: str | None = None
    watch_config: bool = True  # reload the config file when it changes
    watch_interval_s: float = Field(default=1.0, gt=0)
    grpc: GrpcConfig = Field(default_factory=GrpcConfig)


class ProviderConfig(_Strict):
    """An upstream endpoint: an OpenAI-compatible API, a vLLM server, Azure OpenAI, or Anthropic."""

    kind: Literal["openai", "vllm", "anthropic", "azure"]
    base_url: str = Field(pattern=r"^https?://")  # azure: the resource's root, https://{resource}.openai.azure.com
    api_key: str | None = None  # a ${ENV_VAR} or ${file:/path} reference (routing/config_env.py), never a literal
    # Sent with every request to this provider (OpenAI-Organization, OpenAI-Project, a custom auth header...);
    # a deployment's own `headers` add to these and override them by name. Values are kept as written
    # (`${...}` references resolved where used, like api_key) and masked in GET /admin/config.
    headers: dict[str, str] = Field(default_factory=dict)
    # azure: the `api-version` of the classic deployment URLs (default backends.azure.DEFAULT_API_VERSION),
    # or "v1" for the v1 API (/openai/v1/..., no api-version).
    api_version: str | None = Field(default=None, pattern=r"^(v1|\d{4}-\d{2}-\d{2}(-preview)?)$")
    max_connections: int = Field(default=256, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    health_path: str | None = None  # default: /health for vllm, none for the others
    metrics_path: str | None = None  # default: /metrics for vllm
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(default=4096, gt=0)  # Anthropic requires max_tokens


class StreamDeadlines(_Strict):
    """Deadlines of a streamed answer, on top of the socket's `read_s`; unset: only `read_s` applies.

    Both are measured by the router on what the backend relays (keep-alive comments do not count), so a
    provider that sends headers at once and pings while it queues is still cut."""

    # From sending the request to the first chunk with content (text, tool calls, reasoning or a finish;
    # not the role chunk). Before it, nothing reached the client, so a miss fails over invisibly.
    # Streams only: a non-streamed answer's content is the whole answer (read_s and total_s bound it).
    first_token_s: float | None = Field(default=None, gt=0)
    idle_s: float | None = Field(default=None, gt=0)  # the longest gap between two chunks of a stream


class DeploymentConfig(_Strict):
    """A model at a backend: what a route sends traffic to."""

    name: str = Field(pattern=r"^[A-Za-z0-9._:-]+$")
    provider: str  # a key of `providers`, or "local" for a llama.cpp model from `models`
    model: str  # the model name at that provider (for "local": the card id)
    card: str | None = None  # model card for context length, metadata and prices
    params: dict[str, Any] = Field(default_factory=dict)  # request parameter overrides
    weight: float = Field(default=1.0, ge=0)
    context_length: int | None = Field(default=None, gt=0)
    cost_per_mtok: float | None = Field(default=None, ge=0)  # overrides the card's prices for `cost`
    # Self-hosted spend: the instance's price spread over its measured throughput (tokens/s;
    # default: the model card's measured decode speed).
    instance_price_per_hour: float | None = Field(default=None, ge=0)
    throughput_tokens_per_s: float | None = Field(default=None, gt=0)
    # When Redis cannot be asked, may requests to this deployment skip rate limits (open)
    # or are they refused (closed)? Open by default: an outage of Redis is not an outage of the gateway.
    rate_limit_failure: Literal["open", "closed"] = "open"
    # The upstream's quota for this deployment (LiteLLM's rpm/tpm): requests and tokens per minute, counted on
    # every replica together when the gateway has Redis. A deployment at its cap is skipped (the next one is
    # tried; none left: 429 with Retry-After), so the upstream never sees a request it would answer with 429.
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)  # on every request, over its provider's `headers`
    # This deployment's own stream deadlines (a slow-to-start model, a provider known to pause): each value
    # set here overrides the route's for attempts on this deployment.
    timeouts: StreamDeadlines = Field(default_factory=StreamDeadlines)
    # How it may go on with a stream another deployment broke off: "prefill" (continue the partial answer:
    # vLLM, Anthropic, local models), "restart" (answer afresh; only the part past the client's text is
    # relayed, and only if it begins with exactly that text), "auto" (prefill where the backend can, then
    # restart if the prefill is refused; restart where it cannot), "none" (never asked to continue).
    continuation: Literal["auto", "prefill", "instruction", "restart", "none"] = "auto"
    # The scheduler (routing/scheduler.py): requests served at once from this replica. Unset: a local
    # model's engine slots (parallel x instances), and no limit for a provider.
    max_concurrency: int | None = Field(default=None, ge=1)
    # Requests that may wait for a slot; a newcomer beyond it gets 503 (or takes the place of a less urgent
    # or less fairly served waiter). Unset: a local model's `max_queue`, and no bound for a provider.
    max_queue: int | None = Field(default=None, ge=0)
    # The share of the slots batch requests may hold, so that interactive ones always find room.
    batch_share: float = Field(default=0.5, gt=0, le=1)
    # The share near-real-time (and batch) requests may hold together; below 1 keeps the rest for
    # interactive requests alone. 1: none held back (interactive requests still go first in the queue).
    near_real_time_share: float = Field(default=1.0, gt=0, le=1)


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_base_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    retry_after_cap_s: float = Field(default=5.0, ge=0)
    # Retries of one deployment on a retryable error (not a timeout) before moving on; 0: move on at once.
    retry_same: int = Field(default=0, ge=0, le=10)


class Timeouts(StreamDeadlines):
    connect_s: float = Field(default=5.0, gt=0)
    # The longest a request waits for capacity: a slot of a deployment at its `max_concurrency`, or its
    # key's or this route's `max_concurrent_requests`. Batch requests wait up to `total_s` instead.
    queue_s: float = Field(default=10.0, gt=0)
    read_s: float = Field(default=60.0, gt=0)  # any one socket read: to the first byte, and between stream chunks
    # The whole request, all attempts included, streams to their last chunk (then an in-band timeout + [DONE]).
    total_s: float = Field(default=300.0, gt=0)


class RouteCache(_Strict):
    enabled: bool = True
    ttl_s: float = Field(default=3600.0, gt=0)
    stale_grace_s: float = Field(default=86400.0, ge=0)  # how long a stale answer may stand in when all fails
    max_entry_bytes: int = Field(default=1024 * 1024, gt=0)
    sampled: bool = False  # also cache answers to sampled (temperature > 0, no seed) requests
    # "key": each API key has its own entries, so a hit (its header, its speed) never tells one tenant what
    # another asked; "shared": one set of entries for every caller of the route (more hits, less privacy).
    scope: Literal["key", "shared"] = "key"
    max_client_ttl_s: float = Field(default=86400.0, gt=0)  # x-gateway-cache-ttl above this is lowered to it


class RouteLimits(_Strict):
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class LastResort(_Strict):
    message: str = "The service is temporarily degraded. Please try again shortly."


class Condition(_Strict):
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    header: dict[str, str] | None = None  # every named request header must equal its value
    metadata: dict[str, str] | None = None  # every `metadata` tag in the body must equal its value
    key_tier: str | None = None  # the caller's key tier (API keys arrive with the Redis issue)

    @model_validator(mode="after")
    def _not_empty(self) -> "Condition":
        if not any(v is not None for v in self.model_dump().values()):
            raise ValueError("a rule needs at least one condition")
        return self


class Rule(_Strict):
    when: Condition
    route: str | None = None  # send to another route ...
    deployments: list[str] | None = None  # ... or to this set of deployments

    @model_validator(mode="after")
    def _one_target(self) -> "Rule":
        if (self.route is None) == (self.deployments is None):
            raise ValueError("a rule needs exactly one of 'route' or 'deployments'")
        return self


Strategy = Literal["priority", "weighted", "least-busy", "lowest-latency", "cost"]
PriorityLabel = Literal["interactive", "near-real-time", "batch"]  # backends.contract.priority.Priority labels


class RouteConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._:/-]+$")
    aliases: list[str] = Field(default_factory=list)
    deployments: list[str] = Field(min_length=1)
    strategy: Strategy = "priority"
    rules: list[Rule] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    stream_continuation: bool = True  # continue a broken stream on the next deployment that can
    last_resort: LastResort | None = None
    cache: RouteCache = Field(default_factory=RouteCache)
    rate_limit: RouteLimits = Field(default_factory=RouteLimits)
    # The scheduling class of this route's requests (unset: the key's), capped by what the key may use;
    # a request's x-gateway-priority header overrides it.
    priority: PriorityLabel | None = None
    # Requests of this route in flight at once, on every replica together (with Redis); more wait up to
    # `timeouts.queue_s`, then get 429 concurrency_limit_exceeded.
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    # Count this route towards /ready: 503 while none of its deployments is usable. Off (the default), such a
    # route is only reported `degraded` and /ready stays 200: an upstream's outage is every replica's at once.
    ready_requires_upstreams: bool = False


class BreakerConfig(_Strict):
    failure_threshold: int = Field(default=5, ge=1)  # consecutive failures that open it
    error_rate: float = Field(default=0.5, gt=0, le=1)  # ... or this failure rate over `window`
    window: int = Field(default=20, ge=2)
    min_requests: int = Field(default=10, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)  # open this long after tripping, before the first probe
    # After a failed probe: the next one after probe_initial_s, doubling per failed probe up to probe_max_s
    # (and never past cooldown_s), each wait shortened by up to probe_jitter of itself. The defaults find a
    # recovered deployment within 5 s plus the gap between requests; one that stays down gets a probe every 4-5 s.
    probe_initial_s: float = Field(default=1.0, gt=0)
    probe_max_s: float = Field(default=5.0, gt=0)
    probe_jitter: float = Field(default=0.2, ge=0, lt=1)

    @model_validator(mode="after")
    def _probe_schedule_grows(self) -> "BreakerConfig":
        if self.probe_initial_s > self.probe_max_s:
            raise ValueError(f"breaker probe_initial_s ({self.probe_initial_s:g}) must not exceed "
                             f"probe_max_s ({self.probe_max_s:g})")
        return self


class HealthCheckConfig(_Strict):
    interval_s: float = Field(default=10.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    enabled: bool = True


class RedisConfig(_Strict):
    url: str | None = None  # or ${REDIS_URL}; also --redis-url and the REDIS_URL environment variable
    # The response cache's own Redis (or ${REDIS_CACHE_URL:-}); unset or empty: the cache shares `url`. It must
    # be another server, not another DB of the same one: maxmemory and the eviction policy are per server.
    cache_url: str | None = None
    prefix: str = "gw:"
    timeout_s: float = Field(default=0.25, gt=0)  # per call; past it the cache fails open
    degraded_for_s: float = Field(default=10.0, gt=0)  # /ready says "degraded" this long after the last error


class CacheConfig(_Strict):
    enabled: bool = True
    max_entries: int = Field(default=10_000, ge=1)  # in-process LRU only (no Redis)


class UsageConfig(_Strict):
    o200k_path: str | None = None  # a local o200k_base.tiktoken for gpt-4o-family estimates
    # What a request that names no max_tokens is reserved for, in every TPM limit: a key's, a route's, a
    # deployment's (routing/plan.py; corrected to the real usage once it is answered).
    default_max_tokens: int = Field(default=512, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)  # usage counters are batched this long per replica


class SelfHostingOption(_Strict):
    """What running a deployment yourself costs, for the cost report's comparison."""

    deployment: str  # a deployment name (self-hosted: vllm or local)
    instance_price_per_hour: float = Field(ge=0)
    instances: int = Field(default=1, ge=1)
    monthly_ops_cost: float = Field(default=0.0, ge=0)  # people, on-call, monitoring


class CostConfig(_Strict):
    """Inputs of `llm-gateway cost`: the provider cards to compare with, and self-hosting prices."""

    compare_with: list[str] = Field(default_factory=list)  # provider model-card ids, e.g. [gpt-4o-mini]
    self_hosting: list[SelfHostingOption] = Field(default_factory=list)
    days_per_month: float = Field(default=30.0, gt=0)


class LoggingConfig(_Strict):
    json_requests: bool = True  # one JSON line per request on stderr (gateway.request_log)
    # The event lines (the gateway's and uvicorn's loggers): readable text, or one JSON object per line for a
    # log shipper (gateway.logsetup). The request lines are JSON either way.
    format: Literal["text", "json"] = "text"
    # Opt-in: add prompts and completions to that line, with keys, tokens, e-mails and card numbers redacted.
    log_prompts: bool = False


class ResponsesConfig(_Strict):
    """The Responses API's stored responses (`store: true`, `previous_response_id`, GET and DELETE)."""

    store_ttl_s: float = Field(default=30 * 86_400, gt=0)  # OpenAI keeps them 30 days
    max_entries: int = Field(default=10_000, ge=1)  # in-process store only (no Redis)


class BatchesConfig(_Strict):
    """The Files and Batch APIs (gateway/batches): limits as OpenAI's, and how batch lines are run."""

    enabled: bool = True
    files_dir: str | None = None  # file contents (a shared volume for several replicas); default: the data dir
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)  # OpenAI: 200 MB a batch input file
    max_lines: int = Field(default=50_000, ge=1)  # OpenAI: 50,000 requests a batch
    concurrency: int = Field(default=2, ge=1, le=256)  # lines in flight per replica
    # Batch lines run only while fewer interactive requests than this are in flight on the replica.
    yield_to_interactive: int = Field(default=1, ge=1)
    lease_s: float = Field(default=15.0, gt=1)  # a replica's hold on a batch; a dead one's runs out
    line_retries: int = Field(default=3, ge=0)  # retryable failures (overloaded, unavailable) before a line fails
    retention_s: float = Field(default=30 * 86_400, gt=0)  # files and batches are kept this long


class GatewayConfig(_Strict):
    """With no `models` key, a config that defines no routes serves the embedded default model;
    one that defines routes or deployments serves only what it names."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    models: list[LlamaCppModelConfig] = Field(
        default_factory=lambda: [LlamaCppModelConfig(card="gemma-3-270m"),
                                 # /v1/embeddings out of the box; not needed for /ready (chat is the point)
                                 LlamaCppModelConfig(card="all-minilm-l6-v2", required=False)]
    )
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    default_route: str | None = None  # for models no route names
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health_checks: HealthCheckConfig = Field(default_factory=HealthCheckConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    usage: UsageConfig = Field(default_factory=UsageConfig)
    cost: CostConfig = Field(default_factory=CostConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)

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
    """A config that cannot be used. `problems` holds one line-numbered message each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))
