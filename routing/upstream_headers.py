"""Extra headers for upstream requests (`headers:` of a provider and of a deployment): their rules and values.

A header the gateway sets itself, or one that belongs to a single hop, is refused when the config is read
(with its line), so a config cannot break framing (Content-Length, Transfer-Encoding), point a request at
another host, or quietly replace the credentials `api_key` makes. Values are secrets until proven otherwise:
kept as written in the config (routing/config_env.py), resolved only here, when a backend is built, and
masked in GET /admin/config unless they are one whole `${...}` reference.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Iterator, Mapping

from routing import config_env
from routing.config import DeploymentConfig, ProviderConfig

log = logging.getLogger("llm_gateway.routing")

Problem = tuple[tuple[Any, ...], str]

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
_SECRET_NAME = re.compile(r"auth|key|token|secret|password|cookie|signature|credential", re.I)
_BAD_VALUE = re.compile(r"[\r\n\x00]")

# One hop's business (RFC 9110 7.6.1): never forwarded by a proxy, and never the config's to set.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
# What the gateway (or its HTTP client) sets on every upstream request, and why.
MANAGED = {
    "host": "comes from base_url",
    "content-length": "is the body's length, set for each request",
    "content-type": "is application/json, set by the gateway",
    "content-encoding": "the gateway sends bodies uncompressed",
    "accept": "is set by the gateway for each kind of answer",
    "accept-encoding": "is set by the HTTP client, which decompresses what it asked for",
    "expect": "is not used by the gateway",
    "traceparent": "is the request's trace context, set by the gateway",
    "tracestate": "is the request's trace context, set by the gateway",
}
# Per kind: headers that carry what other settings already say.
_KIND_OWNS: dict[str, dict[str, str]] = {
    "anthropic": {"anthropic-version": "comes from anthropic_version"},
}
_AUTH_HEADER = {"openai": ("authorization",), "vllm": ("authorization",), "azure": ("api-key", "authorization"),
                "anthropic": ("x-api-key", "authorization")}


def problems(where: tuple[Any, ...], headers: Mapping[str, Any], provider: ProviderConfig | None) -> Iterator[Problem]:
    """What is wrong with one `headers` mapping (`where` is its location), for its provider (None: unknown)."""
    seen: dict[str, str] = {}
    for name, value in headers.items():
        loc = (*where, name)
        lower = name.lower()
        if not _TOKEN.match(name):
            yield loc, f"{name!r} is not an HTTP header name"
            continue
        if lower in seen:
            yield loc, f"{name!r} is given twice (also as {seen[lower]!r}): header names ignore case"
        seen[lower] = name
        if lower in HOP_BY_HOP:
            yield loc, f"{name} is a hop-by-hop header: it cannot be set for an upstream"
            continue
        why = MANAGED.get(lower) or (_KIND_OWNS.get(provider.kind, {}).get(lower) if provider else None)
        if why:
            yield loc, f"{name} {why}: remove it here"
            continue
        if provider is not None and provider.api_key is not None and lower in _AUTH_HEADER.get(provider.kind, ()):
            yield loc, (f"{name} would replace the credentials api_key sends: remove it, or remove api_key "
                        f"and give the whole header here")
            continue
        if not isinstance(value, str):
            continue  # the schema says so already
        if _BAD_VALUE.search(value):
            yield loc, "a header value cannot hold a line break or a NUL"
        elif _SECRET_NAME.search(name) and "${" not in value:
            yield loc, "give this value as a reference (${ENV_VAR} or ${file:/path}), not a literal"


def missing(where: str, headers: Mapping[str, str]) -> Iterator[str]:
    """Warnings for header values whose references have no value here (`llm-gateway check`)."""
    for name, value in headers.items():
        why = config_env.problem(value)
        if why:
            yield f"{where} header {name}: {why} (the header would not be sent)"


def merged(provider: ProviderConfig, dep: DeploymentConfig) -> dict[str, str]:
    """The headers of one deployment's requests, resolved: its provider's, then its own over them (by name,
    whatever the case). A header whose value has no value here is left out, with a warning that names it
    (never its value); so is one whose value would hold a line break."""
    raw: dict[str, tuple[str, str]] = {}
    for name, value in [*provider.headers.items(), *dep.headers.items()]:
        raw[name.lower()] = (name, value)
    out: dict[str, str] = {}
    for name, value in raw.values():
        resolved = config_env.resolve(value)
        if resolved is None:
            log.warning("deployment %s: header %s has no value here (%s); it is not sent", dep.name, name,
                        config_env.problem(value) or "empty")
        elif _BAD_VALUE.search(resolved):
            log.warning("deployment %s: header %s resolves to a value with a line break; it is not sent",
                        dep.name, name)
        else:
            out[name] = resolved
    return out
