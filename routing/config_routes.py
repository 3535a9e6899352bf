"""The `routes` section of the config (what a client's `model` name is sent to, and how it fails over), and
the circuit breaker and health checks every deployment shares."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from routing.config_base import _Strict
from routing.config_upstreams import StreamDeadlines

Strategy = Literal["priority", "weighted", "least-busy", "lowest-latency", "cost"]
PriorityLabel = Literal["interactive", "near-real-time", "batch"]  # backends.contract.priority.Priority labels

_SCOPE = ("\"key\": each API key has its own entries, so a hit (its header, its speed) never tells one tenant what "
          "another asked; \"shared\": one set of entries for every caller of the route (more hits, less privacy).")
_PROBES = ("The wait for the next probe after a failed one; it doubles per failed probe up to probe_max_s (and "
           "never past cooldown_s), each wait shortened by up to probe_jitter of itself. The "
           "defaults find a recovered deployment within 5 s plus the gap between requests; one that stays down "
           "gets a probe every 4-5 s.")
_READY = ("Count this route towards /ready: 503 while none of its deployments is usable. Off, such a route is only "
          "reported `degraded` and /ready stays 200: an upstream's outage is every replica's at once.")


class RetryPolicy(_Strict):
    """How a route retries: attempts over its deployments, with exponential backoff between them."""

    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts in all, over every deployment.")
    backoff_base_s: float = Field(default=0.1, ge=0, description="The first backoff, and the least gap between two "
                                                                "attempts; it doubles per try, with jitter.")
    backoff_max_s: float = Field(default=2.0, ge=0, description="The longest backoff.")
    retry_after_cap_s: float = Field(default=5.0, ge=0, description="An upstream's Retry-After is honoured up to "
                                                                    "this long.")
    retry_same: int = Field(default=0, ge=0, le=10, description="Retries of one deployment on a retryable error "
                                                                "(not a timeout) before moving on; 0: move on "
                                                                "at once.")


class Timeouts(StreamDeadlines):
    """A route's deadlines: connecting, waiting for capacity, each read, the whole request, and the stream
    deadlines (which a deployment's `timeouts` may override)."""

    connect_s: float = Field(default=5.0, gt=0, description="Connecting to an upstream.")
    queue_s: float = Field(default=10.0, gt=0, description="The longest a request waits for capacity: a slot of "
                                                           "a deployment at its `max_concurrency`, or its key's or "
                                                           "this route's `max_concurrent_requests`. Batch "
                                                           "requests wait up to `total_s` instead.")
    read_s: float = Field(default=60.0, gt=0, description="Any one socket read: to the first byte, and between "
                                                          "stream chunks.")
    total_s: float = Field(default=300.0, gt=0, description="The whole request, all attempts included, streams to "
                                                            "their last chunk (then an in-band timeout and "
                                                            "[DONE]).")


class RouteCache(_Strict):
    """The response cache of a route (deterministic requests only, unless `sampled`)."""

    enabled: bool = Field(default=True, description="Cache this route's answers (the top-level `cache.enabled` "
                                                    "must be on too).")
    ttl_s: float = Field(default=3600.0, gt=0, description="How long an entry is fresh.")
    stale_grace_s: float = Field(default=86400.0, ge=0, description="How long a stale answer may stand in when "
                                                                    "every deployment fails.")
    max_entry_bytes: int = Field(default=1024 * 1024, gt=0, description="Larger answers are not stored.")
    sampled: bool = Field(default=False, description="Also cache answers to sampled requests (temperature > 0, "
                                                     "no seed).")
    scope: Literal["key", "shared"] = Field(default="key", description=_SCOPE)
    max_client_ttl_s: float = Field(default=86400.0, gt=0, description="A request's x-gateway-cache-ttl above "
                                                                       "this is lowered to it.")


class RouteLimits(_Strict):
    """A route's own rate limits, on every replica together (with Redis)."""

    rpm: int | None = Field(default=None, ge=1, description="Requests per minute to this route.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute to this route (prompt estimate "
                                                            "plus max_tokens, corrected to the real usage).")


class LastResort(_Strict):
    """A degraded answer (not an error) a route gives when its deployments all failed with retryable errors."""

    message: str = Field(default="The service is temporarily degraded. Please try again shortly.",
                         description="The assistant message of that answer.")


class Condition(_Strict):
    """When a rule applies: every condition given must hold (at least one must be given)."""

    min_prompt_tokens: int | None = Field(default=None, ge=0, description="The prompt has at least this many "
                                                                          "tokens (estimated).")
    max_prompt_tokens: int | None = Field(default=None, ge=0, description="The prompt has at most this many "
                                                                          "tokens (estimated).")
    header: dict[str, str] | None = Field(default=None, description="Every named request header equals its "
                                                                    "value.")
    metadata: dict[str, str] | None = Field(default=None, description="Every `metadata` tag in the request body "
                                                                      "equals its value.")
    key_tier: str | None = Field(default=None, description="The caller's API key has this tier.")

    @model_validator(mode="after")
    def _not_empty(self) -> "Condition":
        if not any(v is not None for v in self.model_dump().values()):
            raise ValueError("a rule needs at least one condition")
        return self


class Rule(_Strict):
    """A route's rule: when its condition holds, the request goes elsewhere (the first match wins)."""

    when: Condition = Field(description="The condition.")
    route: str | None = Field(default=None, description="Send it to this other route ...")
    deployments: list[str] | None = Field(default=None, description="... or to this set of deployments.")

    @model_validator(mode="after")
    def _one_target(self) -> "Rule":
        if (self.route is None) == (self.deployments is None):
            raise ValueError("a rule needs exactly one of 'route' or 'deployments'")
        return self


class RouteConfig(_Strict):
    """What a client's `model` name is sent to: deployments in an order the strategy picks, with failover."""

    name: str = Field(pattern=r"^[A-Za-z0-9._:/-]+$", description="The model name clients send.")
    aliases: list[str] = Field(default_factory=list, description="More model names for this route.")
    deployments: list[str] = Field(min_length=1, description="Names of `deployments` this route may use.")
    strategy: Strategy = Field(default="priority", description="How the order of the deployments is chosen: "
                                                               "in the order listed, by weight, the least busy, "
                                                               "the fastest, or the cheapest first.")
    rules: list[Rule] = Field(default_factory=list, description="Conditions that send a request to other "
                                                                "deployments or another route.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="The route's deadlines.")
    retry: RetryPolicy = Field(default_factory=RetryPolicy, description="Its retries and backoff.")
    stream_continuation: bool = Field(default=True, description="Continue a broken stream on the next "
                                                                "deployment that can.")
    last_resort: LastResort | None = Field(default=None, description="An answer for when everything failed "
                                                                     "(unset: the error).")
    cache: RouteCache = Field(default_factory=RouteCache, description="Its response cache.")
    rate_limit: RouteLimits = Field(default_factory=RouteLimits, description="Its own rate limits.")
    priority: PriorityLabel | None = Field(
        default=None, description="The scheduling class of this route's requests (unset: the key's), capped by "
                                  "what the key may use; a request's x-gateway-priority header overrides it.")
    max_concurrent_requests: int | None = Field(
        default=None, ge=1, description="Requests of this route in flight at once, on every replica together "
                                        "(with Redis); more wait up to `timeouts.queue_s`, then get 429 "
                                        "concurrency_limit_exceeded.")
    ready_requires_upstreams: bool = Field(default=False, description=_READY)


class BreakerConfig(_Strict):
    """The circuit breaker each deployment has: open after repeated failures, then probed until it recovers."""

    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open it.")
    error_rate: float = Field(default=0.5, gt=0, le=1, description="... or this failure rate over `window`.")
    window: int = Field(default=20, ge=2, description="The last outcomes the error rate is measured "
                                                        "over.")
    min_requests: int = Field(default=10, ge=1, description="Outcomes in the window before the error rate "
                                                            "counts.")
    cooldown_s: float = Field(default=30.0, gt=0, description="Open this long after tripping, before the first "
                                                              "probe.")
    probe_initial_s: float = Field(default=1.0, gt=0, description=_PROBES)
    probe_max_s: float = Field(default=5.0, gt=0, description="The longest wait between two probes (see "
                                                              "probe_initial_s).")
    probe_jitter: float = Field(default=0.2, ge=0, lt=1, description="Each wait between probes is shortened by up "
                                                                     "to this fraction of itself.")

    @model_validator(mode="after")
    def _probe_schedule_grows(self) -> "BreakerConfig":
        if self.probe_initial_s > self.probe_max_s:
            raise ValueError(f"breaker probe_initial_s ({self.probe_initial_s:g}) must not exceed "
                             f"probe_max_s ({self.probe_max_s:g})")
        return self


class HealthCheckConfig(_Strict):
    """Background health checks of the providers that have a health path (vLLM's /health and /metrics)."""

    interval_s: float = Field(default=10.0, gt=0, description="Time between two rounds of checks.")
    timeout_s: float = Field(default=2.0, gt=0, description="One check's deadline.")
    enabled: bool = Field(default=True, description="Run the checks.")
