"""The admin API refuses state-changing requests that a browser says come from another site.

The admin API's real protection is its key: it must be sent in the `Authorization` header, which no page of
another site can make a browser send (a form cannot set headers, and a script's cross-origin request with one
needs a CORS preflight that only `server.cors` origins pass). Nothing is ambient (no cookie), so there is
nothing to forge. This is the second line, for the day a key is somewhere a page can reach it: a POST,
PATCH, PUT or DELETE is refused (403) when the browser marks it `Sec-Fetch-Site: cross-site`, or sends an
`Origin` that is not the gateway's own. Reads (GET, HEAD) and callers that are not browsers (the CLI, curl,
SDKs: no `Origin`, no `Sec-Fetch-Site`) are untouched.

"The gateway's own" origin is the host the request was sent to: its `Host` header, or `X-Forwarded-Host`
behind a proxy that rewrites `Host` (a page cannot set that header on a cross-site request either). Origins
that `server.cors` lists by name or by its regular expression are trusted too (the operator allowed those pages
to call the gateway with credentials); its `'*'` is not.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from backends.contract.errors import GatewayError
from routing.config import CorsConfig

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def _netloc(origin: str) -> str | None:
    """`host[:port]` of an origin, lower case, without the scheme's default port; None if not an origin."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return host if port is None or str(port) == _DEFAULT_PORTS.get(parts.scheme) else f"{host}:{port}"


def _host(value: str) -> str:
    """A Host header's `host[:port]` as `_netloc` writes it (a default port dropped)."""
    value = value.split(",")[0].strip().lower()
    for port in _DEFAULT_PORTS.values():
        value = value.removesuffix(f":{port}")
    return value


def _trusted(origin: str, cors: CorsConfig | None) -> bool:
    if cors is None:
        return False
    if origin.lower() in cors.allow_origins:  # '*' is never an Origin a browser sends
        return True
    return cors.allow_origin_regex is not None and re.fullmatch(cors.allow_origin_regex, origin) is not None


def cross_site_refusal(method: str, headers: Headers, cors: CorsConfig | None) -> GatewayError | None:
    """The 403 for a state-changing request a browser sent from another site; None when it may go on."""
    if method in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    if origin is not None and _trusted(origin, cors):
        return None
    own = {_host(h) for h in (headers.get("host"), headers.get("x-forwarded-host")) if h}
    if origin is not None and _netloc(origin) not in own:
        why = f"from the origin {origin!r}, which is not this gateway's"
    elif headers.get("sec-fetch-site", "").lower() == "cross-site":
        why = "from another site (Sec-Fetch-Site: cross-site)"
    else:
        return None
    return GatewayError(f"The admin API does not accept changes sent by a web page {why}.", status_code=403,
                        error_type="permission_error", code="cross_site_request")
