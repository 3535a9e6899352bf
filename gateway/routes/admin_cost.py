"""GET /admin/cost?days=N: the cost report (gateway/cost.py) over the last N UTC days of usage.

Reads the running config (so a hot reload of `cost:` applies at once) and the
usage every replica counted into the shared store.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import GatewayError, InvalidRequest
from gateway.cost import build_report
from gateway.routes.admin import require_admin
from gateway.store_errors import StoreUnavailable
from gateway.usage import DEFAULT_WINDOW_DAYS

router = APIRouter(prefix="/admin")

DEFAULT_DAYS = DEFAULT_WINDOW_DAYS
MAX_DAYS = 400  # usage is kept 400 days


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def last_days(n: int, today: dt.date | None = None) -> list[str]:
    """The last `n` UTC dates, newest first, as /admin/usage lists them."""
    today = today or dt.datetime.now(dt.timezone.utc).date()
    return [(today - dt.timedelta(days=i)).isoformat() for i in range(n)]


@router.get("/cost")
async def cost(request: Request) -> Response:
    """Spend now vs the configured APIs and self-hosting options, with break-even volumes. ?days=N (default 7)."""
    require_admin(request)
    try:
        n = max(1, min(MAX_DAYS, int(request.query_params.get("days", str(DEFAULT_DAYS)))))
    except ValueError:
        raise InvalidRequest("'days' must be a whole number.", param="days") from None
    days = last_days(n)
    try:
        rows = await request.app.state.services.usage.report_deployments(days)
    except StoreUnavailable:
        raise GatewayError("The usage store is unavailable; retry shortly.", status_code=503,
                           error_type="service_unavailable_error", code="store_unavailable",
                           headers={"Retry-After": "1"}) from None
    config = request.app.state.manager.current.config
    report = build_report(rows, config, request.app.state.cards, n)
    return _json({**report, "from": days[-1], "to": days[0]})
