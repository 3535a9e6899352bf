"""The config sections of the gateway's own services: Redis, the response cache, usage, cost, logging, stored
responses, and the Files and Batch APIs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from routing.config_base import _Strict

_CACHE_URL = ("The response cache's own Redis (or ${REDIS_CACHE_URL:-}); unset or empty: the cache shares `url`. It "
              "must be another server, not another DB of the same one: maxmemory and the eviction policy are per "
              "server.")


class RedisConfig(_Strict):
    """Redis, for the shared cache, API keys, limits, spend, stored responses and batches. Without it every
    store is in-process (one replica, one worker)."""

    url: str | None = Field(default=None, description="The durable Redis's URL (a secret: give it as a "
                                                      "reference, e.g. ${REDIS_URL}); --redis-url and the "
                                                      "REDIS_URL environment variable win over it.")
    cache_url: str | None = Field(default=None, description=_CACHE_URL)
    prefix: str = Field(default="gw:", description="Prefix of every key the gateway writes.")
    timeout_s: float = Field(default=0.25, gt=0, description="Deadline of each Redis call; past it the call "
                                                           "fails as in an outage (the cache fails open).")
    degraded_for_s: float = Field(default=10.0, gt=0, description="/ready says \"degraded\" this long after the "
                                                                  "last Redis error.")


class CacheConfig(_Strict):
    """The response cache as a whole (each route has its own `cache` settings too)."""

    enabled: bool = Field(default=True, description="The response cache; off: no route caches.")
    max_entries: int = Field(default=10_000, ge=1, description="Entries of the in-process LRU (used without "
                                                               "Redis only).")


class UsageConfig(_Strict):
    """Token estimates and usage counting."""

    o200k_path: str | None = Field(default=None, description="A local o200k_base.tiktoken file, for gpt-4o-family "
                                                             "token estimates (unset: cl100k_base).")
    default_max_tokens: int = Field(default=512, ge=1, description="The completion tokens every TPM limit (a key's, a "
                                                                   "route's, a deployment's) reserves when a request "
                                                                   "names no max_tokens; corrected to the real usage "
                                                                   "once answered.")
    flush_interval_s: float = Field(default=1.0, gt=0, description="Usage counters are batched this long per "
                                                                   "replica before they are written.")


class SelfHostingOption(_Strict):
    """What running a deployment yourself costs, for the cost report's comparison."""

    deployment: str = Field(description="A deployment name (self-hosted: vllm or local).")
    instance_price_per_hour: float = Field(ge=0, description="The price of one instance per hour.")
    instances: int = Field(default=1, ge=1, description="Instances it runs on.")
    monthly_ops_cost: float = Field(default=0.0, ge=0, description="People, on-call and monitoring, per month.")


class CostConfig(_Strict):
    """Inputs of `llm-gateway cost`: the provider cards to compare with, and self-hosting prices."""

    compare_with: list[str] = Field(default_factory=list, description="Provider model-card ids to price the "
                                                                      "same traffic at, e.g. [gpt-4o-mini].")
    self_hosting: list[SelfHostingOption] = Field(default_factory=list, description="Self-hosted deployments "
                                                                                    "and their prices.")
    days_per_month: float = Field(default=30.0, gt=0, description="Days a month has in the report's monthly "
                                                                  "figures.")


class LoggingConfig(_Strict):
    """What the gateway writes to stderr: one JSON line per request, and the event lines."""

    json_requests: bool = Field(default=True, description="One JSON line per request on stderr "
                                                          "(gateway.request_log).")
    format: Literal["text", "json"] = Field(
        default="text", description="The event lines (the gateway's and uvicorn's loggers): readable text, or one "
                                    "JSON object per line for a log shipper (gateway.logsetup); env "
                                    "LLM_GATEWAY_LOG_FORMAT wins. The request lines are JSON either way.")
    log_prompts: bool = Field(default=False, description="Opt-in: add prompts and completions to the request "
                                                         "line, with keys, tokens, e-mails and card numbers "
                                                         "redacted.")


class ResponsesConfig(_Strict):
    """The Responses API's stored responses (`store: true`, `previous_response_id`, GET and DELETE)."""

    store_ttl_s: float = Field(default=30 * 86_400, gt=0, description="How long a stored response is kept "
                                                                      "(OpenAI: 30 days).")
    max_entries: int = Field(default=10_000, ge=1, description="Responses the in-process store holds (used "
                                                               "without Redis only).")


class BatchesConfig(_Strict):
    """The Files and Batch APIs (gateway/batches): limits as OpenAI's, and how batch lines are run."""

    enabled: bool = Field(default=True, description="Serve /v1/files and /v1/batches.")
    files_dir: str | None = Field(default=None, description="Where file contents are kept (a shared volume for "
                                                            "several replicas); unset: the data dir, "
                                                            "LLM_GATEWAY_DATA_DIR.")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0, description="Largest upload (OpenAI: 200 MB a "
                                                                             "batch input file).")
    max_lines: int = Field(default=50_000, ge=1, description="Requests a batch may hold (OpenAI: 50,000).")
    concurrency: int = Field(default=2, ge=1, le=256, description="Batch lines in flight per replica.")
    yield_to_interactive: int = Field(default=1, ge=1, description="Batch lines run only while fewer interactive "
                                                                   "requests than this are in flight on the "
                                                                   "replica.")
    lease_s: float = Field(default=15.0, gt=1, description="A replica's hold on a batch; a dead replica's runs "
                                                           "out and another takes over.")
    line_retries: int = Field(default=3, ge=0, description="Retryable failures (overloaded, unavailable) before a "
                                                           "line fails.")
    retention_s: float = Field(default=30 * 86_400, gt=0, description="Files and batches are kept this long.")
