"""The `server` section of the config: the HTTP listener, its limits and exposure, CORS, and the gRPC API."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from routing.config_base import _Strict

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

_PUBLIC = "With API keys on, {what} needs the admin key unless this is true."
_LIVENESS = ("/health turns 503 (a liveness probe then restarts the pod) once a required local model has been "
             "`failed` this long: its supervisor gave up on it (it cannot load, or crashed loading in safe mode "
             "too), so it will not serve in this process again. null: /health stays 200 whatever the models do "
             "(gateway/probes.py).")


class CorsConfig(_Strict):
    """Browser clients (gateway/cors.py). Present: on, for the origins listed; absent (the default): off, and no
    CORS code runs at all. Read at start-up: a change needs a restart."""

    allow_origins: list[Annotated[str, AfterValidator(_origin)]] = Field(
        default_factory=list, description="Origins (scheme://host[:port], no path) whose pages may call the "
                                          "gateway, or '*' alone for every origin.")
    allow_origin_regex: str | None = Field(
        default=None, description=r"Origins matching this regular expression (e.g. "
                                  r"`^https://[a-z0-9-]+\.example\.com$`) are allowed too, besides allow_origins.")
    allow_credentials: bool = Field(default=False, description="Let pages send cookies and HTTP auth; never "
                                                               "together with the '*' origin.")
    allow_methods: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: ["GET", "POST", "DELETE", "OPTIONS"],
        description="HTTP methods a page may use ('*': any).")
    allow_headers: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: list(SDK_REQUEST_HEADERS),
        description="Request headers a page may send: by default what the official OpenAI and Anthropic JS "
                    "SDKs send from a browser, and the gateway's own (CORS matches names exactly, no wildcards).")
    expose_headers: list[Annotated[str, AfterValidator(_token)]] = Field(
        default_factory=lambda: list(GATEWAY_RESPONSE_HEADERS),
        description="Response headers a page may read beyond the CORS-safelisted ones: by default the "
                    "gateway's own, Retry-After and the rate-limit headers.")
    max_age: int = Field(default=600, ge=0, le=86400,
                         description="Seconds a browser may cache a preflight answer.")
    allow_private_network: bool = Field(
        default=False, description="Chrome's Private Network Access: may a page on a public origin call this "
                                   "gateway on a private address?")

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
    """The gRPC API for internal callers (gateway/grpc_api): off unless enabled; read at start-up.

    TLS takes a PEM certificate chain and its key (both, or neither: plaintext, for a sidecar or a mesh that
    does TLS itself); with `tls_client_ca_file` too, callers must present a certificate it signed (mTLS)."""

    enabled: bool = Field(default=False, description="Serve the gRPC API (on every worker, sharing the port).")
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=50051, ge=0, le=65535, description="Port of the gRPC server (0: any free one; "
                                                                 "with --workers N a fixed port is required).")
    tls_cert_file: str | None = Field(default=None, description="PEM certificate chain for TLS (with "
                                                                "tls_key_file); unset: plaintext.")
    tls_key_file: str | None = Field(default=None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: str | None = Field(default=None, description="PEM CA bundle: callers must present a "
                                                                     "certificate it signed (mTLS).")

    @model_validator(mode="after")
    def _tls_pair(self) -> "GrpcConfig":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both, or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        return self


class ConsoleConfig(_Strict):
    """The admin console in the browser (gateway/console): off unless enabled; read at start-up.

    It is a static page; everything it shows and changes goes through the admin API with the admin or
    master key, which the page keeps in the tab's sessionStorage only."""

    enabled: bool = Field(default=False, description="Serve the admin console at /console (the page and its "
                                                     "assets; off: no such route). Logging in takes the admin "
                                                     "or master key.")


class ServerConfig(_Strict):
    """The HTTP server: its address, request limits, slow-client deadlines, exposure and start-up switches.

    Slow clients (gateway/connection_guard.py): none of the deadlines ever cuts a response in progress.
    Exposure (gateway/exposure.py): with keys off, only loopback names may be the Host (DNS rebinding) and
    POSTs must be JSON (a web page cannot send that without CORS). This section is read at start-up: a reload
    that changes it names what waits for a restart."""

    host: str = Field(default="127.0.0.1", description="Bind address (env LLM_GATEWAY_HOST, flag --host). A "
                                                       "non-loopback one needs a master key or "
                                                       "allow_unauthenticated.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (env LLM_GATEWAY_PORT, flag --port).")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="Largest request body; a larger "
                                                                          "one gets 413.")
    max_json_depth: int = Field(default=64, ge=8, le=200, description="Nested arrays/objects allowed in a "
                                                                      "request body; deeper gets 400.")
    header_timeout_s: float = Field(default=10.0, gt=0, description="From a request's first byte to the end of "
                                                                    "its headers; then 408 and close.")
    body_timeout_s: float = Field(default=60.0, gt=0, description="The whole request body, once its headers "
                                                                  "are in.")
    drain_timeout_s: float = Field(
        default=120.0, ge=0, description="On SIGTERM/SIGINT the gateway stops accepting and /ready turns 503; "
                                         "requests and streams in flight (HTTP and gRPC) get this long to finish, "
                                         "then are cut (gateway/drain.py).")
    liveness_failed_after_s: float | None = Field(default=60.0, ge=0, description=_LIVENESS)
    body_idle_timeout_s: float = Field(default=15.0, gt=0, description="The longest pause between two pieces "
                                                                       "of a request body.")
    idle_timeout_s: float = Field(default=5.0, gt=0, description="A kept-alive connection with no request is "
                                                                 "closed after this long.")
    max_connections: int = Field(default=2048, ge=1, description="Connections open at once, per worker; "
                                                                 "beyond it a new one gets 503.")
    public_metrics: bool = Field(default=False, description=_PUBLIC.format(what="/metrics"))
    public_openapi: bool = Field(default=False, description=_PUBLIC.format(what="/openapi.json"))
    allowed_hosts: list[str] = Field(default_factory=list, description="More Host names accepted while keys "
                                                                       "are off (besides the loopback names).")
    allow_unauthenticated: bool = Field(default=False, description="Serve a non-loopback address without a "
                                                                   "master key (as the --allow-unauthenticated "
                                                                   "flag does).")
    cors: CorsConfig | None = Field(default=None, description="Browser clients; off unless given.")
    docs: bool = Field(default=False, description="Serve /docs (Swagger UI) and /redoc, from bundled assets.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Level of the event lines (env LLM_GATEWAY_LOG_LEVEL, flag --log-level).")
    model_cards_dir: str | None = Field(default=None, description="A folder of model cards to use instead of "
                                                                  "the shipped ones (env "
                                                                  "LLM_GATEWAY_MODEL_CARDS_DIR wins).")
    watch_config: bool = Field(default=True, description="Reload the config file when it changes (hot reload).")
    watch_interval_s: float = Field(default=1.0, gt=0, description="How often the config file is checked for "
                                                                   "changes.")
    grpc: GrpcConfig = Field(default_factory=GrpcConfig, description="The gRPC API for internal callers.")
    console: ConsoleConfig = Field(default_factory=ConsoleConfig, description="The admin console in the browser, "
                                                                              "at /console.")
