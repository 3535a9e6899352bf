"""What the gateway shows, and to whom, when it has keys and when it has none.

With keys (a master key is set), the operational endpoints stay usable by probes and scrapers but tell
anonymous callers nothing they could use: `/health` answers anyone; `/ready` gives anyone its status
code and status word, and its detail (models, deployments, engines) only to the admin key; `/metrics`
and `/openapi.json` (which lists the admin API) need the admin key unless `server.public_metrics` /
`server.public_openapi` say otherwise.

Without keys (the embedded default on 127.0.0.1), any local program may call the gateway, and so may a
web page the user opens, unless the browser stops it. Two checks make sure it does: a POST must say
`Content-Type: application/json` (which a page can send cross-origin only after a CORS preflight this
server never answers, unless `server.cors` lists the page's origin: gateway/cors.py), and the `Host` must be a loopback name (so a DNS-rebinding page, whose requests
carry its own host name, is refused). `server.allowed_hosts` adds names; a gateway deliberately serving
a non-loopback address without keys (`--allow-unauthenticated`) skips the Host check.
"""

from __future__ import annotations

import ipaddress

from backends.contract.errors import GatewayError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: bytes) -> str:
    """The name part of a Host header: without its port, IPv6 brackets kept off."""
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class Exposure:
    """The checks of requests that arrive while keys are off (called by the request middleware)."""

    def __init__(self, allowed_hosts: list[str], check_host: bool) -> None:
        self.allowed = {h.lower() for h in allowed_hosts}
        self.check_host = check_host

    def refusal(self, method: str, path: str, host: bytes | None, content_type: bytes | None,
                keyed: bool = False) -> GatewayError | None:
        """`keyed`: the request carries an Authorization or x-api-key header, which a page cannot send
        cross-origin without a preflight; a file upload (multipart, which a plain form can send) needs one."""
        if self.check_host and host is not None:
            name = host_name(host)
            if not (is_loopback(name) or name in self.allowed):
                return GatewayError("This gateway has no API keys and serves local callers only; "
                                    f"the Host {name!r} is not one of its names (server.allowed_hosts).",
                                    status_code=403, error_type="permission_error", code="host_not_allowed")
        # The API's POSTs run models (and spend upstream credit) for anyone who can reach them; the admin API
        # needs a key in a header, which no page can send cross-origin without a preflight anyway.
        kind = (content_type or b"").split(b";")[0].strip().lower()
        if method == "POST" and path == "/v1/files" and kind == b"multipart/form-data" and keyed:
            return None
        if method == "POST" and path.startswith("/v1/") and kind != b"application/json":
            return GatewayError("Requests must be sent as JSON with 'Content-Type: application/json'.",
                                status_code=415, error_type="invalid_request_error", code="unsupported_media_type")
        return None
