"""Who is calling: the master key, a virtual key, or nobody (auth off).

Auth is on when the gateway has a master key (`LLM_GATEWAY_MASTER_KEY`, read
once into `Settings`). Without it (the embedded default) every caller is
anonymous and the server binds to 127.0.0.1. Error bodies say what is wrong
with the request, never anything about the key store.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Mapping

from backends.contract.errors import GatewayError
from gateway.keys import MISSING, KeyRecord, KeyStore
from gateway.redis_conn import RedisLink
from gateway.store_errors import StoreUnavailable, unavailable


@dataclass(frozen=True)
class Principal:
    master: bool = False
    key: KeyRecord | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    @property
    def alias(self) -> str | None:
        return "master" if self.master else (self.key.alias if self.key else None)

    @property
    def owner(self) -> str:
        """Who owns what this caller stores (stored responses): its key, else the master key, else everyone."""
        return f"key:{self.key.id}" if self.key else ("master" if self.master else "anonymous")

    @property
    def tier(self) -> str | None:
        return self.key.tier if self.key else None


ANONYMOUS = Principal()


def _unauthorized(message: str) -> GatewayError:
    return GatewayError(message, status_code=401, error_type="invalid_request_error", code="invalid_api_key")


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The caller's API key: `Authorization: Bearer <key>`, else `x-api-key: <key>` (as Anthropic's SDKs send it)."""
    value = headers.get("authorization")
    if not value:
        alt = headers.get("x-api-key")
        return alt.strip() or None if alt is not None else None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Malformed Authorization header; expected 'Bearer <API key>'.")
    return token.strip()


class Authenticator:
    """The master key and the key store: the one place that decides who a caller is."""

    def __init__(self, master_key: str | None, keys: KeyStore, link: RedisLink) -> None:
        self._master = master_key.encode() if master_key else None
        self.keys = keys
        self.link = link

    @property
    def enabled(self) -> bool:
        return self._master is not None

    def is_master_key(self, secret: str | None) -> bool:
        return bool(self._master and secret and hmac.compare_digest(secret.encode(), self._master))

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        return (await self.authenticate_and_fetch(headers, None))[0]

    async def authenticate_and_fetch(self, headers: Mapping[str, str], prefetch: str | None) -> tuple[Principal, Any]:
        """Who is calling, plus the raw value of the Redis key `prefetch` when it could ride along with the
        key lookup (one round trip for both); else `MISSING`."""
        if self._master is None:
            return ANONYMOUS, MISSING
        token = bearer_token(headers)
        if token is None:
            raise _unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <API key>' "
                                "(or as 'x-api-key: <API key>').")
        if hmac.compare_digest(token.encode(), self._master):
            return Principal(master=True), MISSING
        if len(token) > 256 or not token.isascii():
            raise _unauthorized("Incorrect API key provided.")
        try:
            record, fetched = await self.keys.lookup_with(token, prefetch)
        except StoreUnavailable as exc:
            self.link.record_error(exc)
            raise unavailable("API keys cannot be checked", "auth_unavailable") from None
        if record is None:
            raise _unauthorized("Incorrect API key provided.")
        if record.revoked:
            raise _unauthorized("This API key has been revoked.")
        if record.expired:
            raise _unauthorized("This API key has expired.")
        return Principal(key=record), fetched

    def remembered_tier(self, headers: Mapping[str, str]) -> str | None:
        """The caller's tier as this replica last saw it, before any lookup (None when unknown)."""
        if self._master is None:
            return None
        try:
            token = bearer_token(headers)
        except GatewayError:  # malformed: authentication says so in a moment
            return None
        return self.keys.remembered_tier(token) if token else None


def authorize_model(principal: Principal, route: str, requested: str) -> None:
    allowed = principal.key.models if principal.key else None
    if allowed is not None and route not in allowed and requested not in allowed:
        raise GatewayError(f"This API key may not use the model '{requested}'.", status_code=403,
                           error_type="permission_error", code="model_not_allowed", param="model")
