"""What the response cache needs to know about one request: its directives, and its key (or none).

Prepared before the caller is authenticated, so that the entry can be read in the same Redis round
trip as the API key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import weakref
from dataclasses import dataclass
from typing import Mapping

import orjson

from backends.contract.errors import InvalidRequest
from backends.contract.protocol import SamplingFields
from gateway.cache import CacheDirectives, ResponseCache, cache_control, cache_key, canonical_request, is_deterministic
from routing.plan import Plan
from routing.runtime import Route, Runtime

_namespaces: "weakref.WeakKeyDictionary[Route, str]" = weakref.WeakKeyDictionary()  # routes are rebuilt on reload


def namespace(route: Route) -> str:
    """Cache entries belong to a route *and* its deployments: change those and old answers no longer match."""
    cached = _namespaces.get(route)
    if cached is None:
        spec = [(d.name, d.config.provider, d.config.model, d.config.params) for d in route.deployments]
        cached = route.name + ":" + hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]
        _namespaces[route] = cached
    return cached


def tenant(headers: Mapping[str, str], keyed: bool) -> str:
    """Whose cache entries: a hash of the caller's bearer token, known before the key is looked up (so the
    entry can still be read in the same Redis round trip as the key); "-" without one, and for everyone
    when there are no keys (every caller is then the same anonymous tenant)."""
    if not keyed:
        return "-"
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "-"
    return hashlib.sha256(token.strip().encode()).hexdigest()[:16]


@dataclass
class CacheLookup:
    """A request's Cache-Control directives and cache key (None: the cache is bypassed)."""

    directives: CacheDirectives
    key: str | None

    @classmethod
    def prepare(cls, runtime: Runtime, plan: Plan, body: SamplingFields, headers: Mapping[str, str],
                keyed: bool) -> "CacheLookup":
        """`keyed`: the gateway has keys, so each caller's entries are its own (`scope: key`)."""
        try:
            directives = cache_control(headers)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="x-gateway-cache-ttl") from None
        route_cache = plan.route.config.cache
        if directives.ttl_s is not None and directives.ttl_s > route_cache.max_client_ttl_s:
            directives = dataclasses.replace(directives, ttl_s=route_cache.max_client_ttl_s)
        if not (runtime.config.cache.enabled and route_cache.enabled and not directives.no_store):
            return cls(directives, None)
        wire = body.wire_body()
        if not (route_cache.sampled or body.deterministic or is_deterministic(wire)):
            return cls(directives, None)
        space = namespace(plan.route)
        if route_cache.scope == "key":
            space += ":" + tenant(headers, keyed)
        native = getattr(body, "_native", None)
        if native is not None:  # the same chat translation of two different native requests is two answers
            wire = {**wire, "__native__": {"api": native[0], "body": canonical_request(native[1])}}
        return cls(directives, cache_key(space, body.endpoint, wire))

    def redis_key(self, cache: ResponseCache) -> str | None:
        """The entry's Redis key, to read along with the API key; None when it cannot ride along."""
        if self.key is None or cache.redis is None or not cache.rides_with_keys:
            return None
        return cache.redis_key(self.key)
