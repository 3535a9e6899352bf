"""Admin API for virtual keys and usage: /admin/keys and /admin/usage.

The secret of a new key is returned once, in the creation response, and
never again: only its hash is stored.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from backends.contract.errors import GatewayError, InvalidRequest, NotFound
from backends.contract.priority import Priority
from gateway.keys import KeyExists
from gateway.routes.admin import require_admin
from gateway.store_errors import StoreUnavailable
from gateway.usage import DEFAULT_WINDOW_DAYS, FIELDS, without_tiers

router = APIRouter(prefix="/admin")


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str | None = Field(default=None, min_length=1, max_length=100)
    owner: str | None = Field(default=None, max_length=200)
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, ge=0)
    budget_period: Literal["daily", "monthly", "total"] | None = None
    expires_at: float | None = None
    expires_in_s: float | None = Field(default=None, gt=0)
    tier: str | None = Field(default=None, max_length=50)
    revoked: bool | None = None
    priority: Literal["interactive", "near-real-time", "batch"] | None = None  # the best class it may use
    weight: float | None = Field(default=None, gt=0, le=1000)  # its fair share among waiting tenants
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    # Import a key issued elsewhere (e.g. by the gateway this one replaces); creation only.
    key: str | None = Field(default=None, min_length=16, max_length=256, pattern=r"^[\x21-\x7e]+$")


def _fields(raw: bytes, creating: bool) -> dict[str, Any]:
    try:
        fields = KeyFields.model_validate(orjson.loads(raw or b"{}"))
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Invalid JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"Invalid key field '{where}': {first['msg']}.", param=where or None) from None
    data = fields.model_dump(exclude_unset=True)
    if "expires_in_s" in data:
        seconds = data.pop("expires_in_s")
        data["expires_at"] = None if seconds is None else time.time() + seconds  # null: never expires
    if creating and not data.get("alias"):
        raise InvalidRequest("A new key needs an 'alias'.", param="alias")
    if not creating and "key" in data:
        raise InvalidRequest("A key's secret cannot be changed; create a new key.", param="key")
    return data


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _store_down() -> GatewayError:
    return GatewayError("The key store is unavailable; retry shortly.", status_code=503,
                        error_type="service_unavailable_error", code="store_unavailable", headers={"Retry-After": "1"})


@router.post("/keys")
async def create_key(request: Request) -> Response:
    require_admin(request)
    data = _fields(await request.body(), creating=True)
    imported = data.pop("key", None)
    if imported is not None and request.app.state.services.auth.is_master_key(imported):
        raise InvalidRequest("That secret is the master key.", param="key")
    try:
        secret, record = await request.app.state.services.keys.create(imported, **data)
    except StoreUnavailable:
        raise _store_down() from None
    except KeyExists:
        raise GatewayError("That secret is already a key.", status_code=409, error_type="invalid_request_error",
                           code="key_exists", param="key") from None
    return _json({"key": secret, **record.public()}, 201)


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    require_admin(request)
    try:
        records = await request.app.state.services.keys.list()
    except StoreUnavailable:
        raise _store_down() from None
    return _json({"object": "list", "data": [r.public() for r in records]})


@router.get("/keys/{key_id}")
async def get_key(key_id: str, request: Request) -> Response:
    require_admin(request)
    record = await _or_404(request.app.state.services.keys.get(key_id), key_id)
    return _json(record.public())


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, request: Request) -> Response:
    require_admin(request)
    data = _fields(await request.body(), creating=False)
    record = await _or_404(request.app.state.services.keys.update(key_id, data), key_id)
    return _json(record.public())


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> Response:
    require_admin(request)
    record = await _or_404(request.app.state.services.keys.revoke(key_id), key_id)
    return _json(record.public())


async def _or_404(aw: Any, key_id: str) -> Any:
    try:
        record = await aw
    except StoreUnavailable:
        raise _store_down() from None
    if record is None:
        raise NotFound(f"No key with id '{key_id}'.", code="key_not_found")
    return record


@router.get("/usage")
async def usage(request: Request) -> Response:
    """Usage per key, route and day. ?days=N (default 7) &key_id=... &tier=interactive|batch (only that tier's
    rows) &group_by=tier (a row per tier) | deployment (rows per day, route and deployment, "cache" for the
    answers the cache gave; no key_id then). `tiers` holds the totals of each tier shown."""
    require_admin(request)
    query = request.query_params
    try:
        n = max(1, min(400, int(query.get("days", str(DEFAULT_WINDOW_DAYS)))))
    except ValueError:
        raise InvalidRequest("'days' must be a whole number.", param="days") from None
    tier = _tier_param(query.get("tier"))
    group_by = query.get("group_by")
    if group_by not in (None, "tier", "deployment"):
        raise InvalidRequest("'group_by' must be 'tier' or 'deployment' (rows are per day, key and route "
                             "otherwise).", param="group_by")
    if group_by == "deployment" and query.get("key_id"):
        raise InvalidRequest("Usage per deployment is not kept per key: leave out 'key_id' with "
                             "'group_by=deployment'.", param="key_id")
    today = dt.datetime.now(dt.timezone.utc).date()
    days = [(today - dt.timedelta(days=i)).isoformat() for i in range(n)]
    store = request.app.state.services.usage
    try:
        tier_rows = await (store.report_deployments(days) if group_by == "deployment"
                           else store.report(days, query.get("key_id"), by_tier=True))
    except StoreUnavailable:
        raise _store_down() from None
    if tier is not None:
        tier_rows = [r for r in tier_rows if r["tier"] == tier]
    if group_by == "deployment":
        rows = tier_rows if tier else without_tiers(tier_rows, ("day", "route", "deployment"))
    else:
        rows = tier_rows if group_by or tier else without_tiers(tier_rows)
    per_tier: dict[str, list[dict[str, Any]]] = {}
    for r in tier_rows:
        per_tier.setdefault(r["tier"], []).append(r)
    return _json({"days": days, "rows": rows, "totals": _totals(rows),
                  "tiers": {t: _totals(tier_of) for t, tier_of in per_tier.items()}})


def _tier_param(value: str | None) -> str | None:
    """The tier asked for, by its label (as usage rows, logs and metrics name it)."""
    if value is None:
        return None
    try:
        return Priority.parse(value).label
    except ValueError as exc:
        raise InvalidRequest(f"Invalid value for 'tier': {exc}.", param="tier") from None


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    totals = {k: sum(r[k] for r in rows) for k in FIELDS}
    totals["cost_usd"] = round(totals["cost_usd"], 8)
    return totals
