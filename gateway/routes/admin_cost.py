"""GET /admin/cost?days=N: the cost report (gateway/cost.py) over the last N UTC days of usage, and its chart.

Reads the running config (so a hot reload of `cost:` applies at once) and the
usage every replica counted into the shared store. The JSON carries the
chart's numbers (`chart`: gateway/cost_series.py) and /admin/cost/chart.svg
draws them (gateway/cost_chart.py), so a console can show the picture and a
table of the same numbers.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from backends.contract.errors import GatewayError, InvalidRequest
from gateway.cost import build_report
from gateway.cost_chart import render_svg
from gateway.cost_series import chart_series
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


SVG_HEADERS = {
    # An SVG opened on its own is a document: it must not run script or fetch anything.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",  # admin data
}


def _days(request: Request) -> int:
    try:
        return max(1, min(MAX_DAYS, int(request.query_params.get("days", str(DEFAULT_DAYS)))))
    except ValueError:
        raise InvalidRequest("'days' must be a whole number.", param="days") from None


def _up_to(request: Request) -> float | None:
    """?up_to=N: where the chart's x axis ends, in requests/day (default: around today's volume and the
    break-evens)."""
    text = request.query_params.get("up_to")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (0 < value <= 1e15):
        raise InvalidRequest("'up_to' must be a positive number of requests per day.", param="up_to")
    return value


async def _report(request: Request) -> dict[str, Any]:
    """The report with its chart's numbers, for the JSON and the picture alike."""
    require_admin(request)
    n, up_to = _days(request), _up_to(request)
    days = last_days(n)
    try:
        rows = await request.app.state.services.usage.report_deployments(days)
    except StoreUnavailable:
        raise GatewayError("The usage store is unavailable; retry shortly.", status_code=503,
                           error_type="service_unavailable_error", code="store_unavailable",
                           headers={"Retry-After": "1"}) from None
    config = request.app.state.manager.current.config
    report = build_report(rows, config, request.app.state.cards, n)
    return {**report, "chart": chart_series(report, up_to), "from": days[-1], "to": days[0]}


@router.get("/cost")
async def cost(request: Request) -> Response:
    """Spend now vs the configured APIs and self-hosting options, with break-even volumes and the chart's
    series. ?days=N (default 7), ?up_to=N (the chart's last requests/day)."""
    return _json(await _report(request))


@router.get("/cost/chart.svg", response_class=Response,
            responses={200: {"description": "The break-even chart", "content": {"image/svg+xml": {}}}})
async def cost_chart(request: Request) -> Response:
    """The break-even chart (SVG) of the same report: each option's monthly cost against requests/day.
    ?days=N, ?up_to=N as for /admin/cost."""
    svg = render_svg((await _report(request))["chart"])
    return Response(svg.encode("utf-8"), media_type="image/svg+xml", headers=SVG_HEADERS)
