"""The break-even chart's numbers: x = requests per day, y = each option's monthly cost.

Data only, from a cost report (gateway/cost.py) and its cost lines, so the SVG
(gateway/cost_chart.py), `GET /admin/cost` (its `chart`, for a browser to draw
or tabulate) and the CLI show the same numbers. The x axis is linear from 0:
the lines are straight there (an API grows with volume, self-hosting is flat)
and their crossing is where the eye looks for it. It spans today's volume and
the break-evens, unless a break-even lies so far out that today's volume would
vanish against the y axis; then the chart says which option is cheaper over
the range it shows, and where the break-even is.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.cost import CostLine, api_line, count, hosting_line, money

ZOOM = 20  # break-evens beyond this many times today's volume are named, not drawn
HEADROOM = 1.2  # the axis runs this far past the last point of interest
EMPTY_RANGE = 10_000.0  # requests/day shown when there is no traffic to centre on
TICKS = 6
TITLE = "Cost break-even: API vs self-hosting"
X_LABEL = "Requests per day (linear)"
X_LABEL_CACHED = "Requests per day reaching a model (linear; cache hits cost nothing)"
Y_LABEL = "Monthly cost (USD)"


def nice_step(span: float, ticks: int = TICKS) -> float:
    """A step of 1, 2, 2.5 or 5 times a power of ten giving about `ticks` steps over `span`."""
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def _clean(x: float) -> float:
    return float(f"{x:.12g}")  # 0.1 * 3 is 0.3 on an axis


def axis(top: float) -> list[float]:
    """Ticks from 0 to the first nice number at or above `top` (> 0)."""
    top = max(top, 1e-6)  # a millionth of a request or a dollar: below that an axis has nothing to show
    step = nice_step(top)
    n = max(1, math.ceil(top / step - 1e-9))
    return [_clean(i * step) for i in range(n + 1)]


def _lines(report: dict[str, Any]) -> tuple[list[CostLine], list[CostLine], list[str]]:
    """The API lines that can be drawn, the self-hosting lines, and the APIs without a price per request yet."""
    dpm = report["days_per_month"]
    apis, unpriced = [], []
    for a in report["total"]["apis"]:
        line = api_line(a["card"], a["cost_per_request_usd"], dpm)
        if line is None:
            unpriced.append(a["card"])
        else:
            apis.append(line)
    return apis, [hosting_line(h, dpm) for h in report["self_hosting"]], unpriced


def _x_range(today: float, crossings: list[float], up_to: float | None) -> list[float]:
    if up_to is not None:
        ticks = [t for t in axis(up_to) if t < up_to * (1 - 1e-9)]
        return ticks + [_clean(up_to)]
    near = [x for x in crossings if x > 0 and (not today or x <= ZOOM * today)]
    if today and not near and any(x > ZOOM * today for x in crossings):
        return axis(ZOOM * today)  # every break-even is far out: show the headroom, name them in words
    base = max([today, *near]) or EMPTY_RANGE / HEADROOM
    return axis(base * HEADROOM)


def _crossings(report: dict[str, Any], hosts: dict[str, CostLine], x_max: float) -> list[dict[str, Any]]:
    """The report's own break-evens, with the cost there and whether the chart shows them."""
    out = []
    for b in report["total"]["break_even"]:
        x, host = b["requests_per_day"], hosts[b["self_hosting"]]
        out.append({"api": b["api"], "self_hosting": b["self_hosting"], "requests_per_day": x,
                    "monthly_usd": host.monthly_usd(x) if x is not None else None,
                    "in_range": x is not None and 0 < x <= x_max})
    return out


def _pair_sentence(api: CostLine, host: CostLine, be: dict[str, Any], x_max: float) -> str:
    """What one API-vs-self-hosting pair does over the chart, in words a screen reader can say."""
    a, h = f"{api.name} via API", f"self-hosting on {host.name}"
    if be["in_range"]:
        x, y = be["requests_per_day"], be["monthly_usd"]
        below, above = (a, h) if api.monthly_usd(x / 2) < host.monthly_usd(x / 2) else (h, a)
        return (f"Break-even: {a} and {h} both cost {money(y)}/month at {count(x)} requests/day; "
                f"below that {below} is cheaper, above it {above}.")
    d = api.monthly_usd(x_max) - host.monthly_usd(x_max)
    if not d:
        return f"{a} and {h} cost the same at every volume up to {count(x_max)} requests/day."
    cheap, dear = (a, h) if d < 0 else (h, a)
    text = f"At every volume up to {count(x_max)} requests/day, {cheap} is cheaper than {dear}"
    if be["requests_per_day"] and be["requests_per_day"] > x_max:
        text += f" (break-even at {count(be['requests_per_day'])} requests/day, beyond this chart)"
    return text + "."


def _state(report: dict[str, Any], apis: list[CostLine], hosts: list[CostLine], unpriced: list[str],
           crossings: list[dict[str, Any]], x_max: float) -> tuple[str, list[str]]:
    """Which picture this is, and the sentences that say what it shows (or why it shows little)."""
    total, days = report["total"], report["days"]
    if not hosts:
        return "no_self_hosting", [
            "No self-hosting options configured: add `cost.self_hosting: [{deployment, instance_price_per_hour, "
            "instances, monthly_ops_cost}]` to the config to compare running a model yourself with an API."]
    if not total["requests"]:
        why = "the API lines need the measured tokens per request, so only self-hosting is drawn"
        return "no_usage", [f"No usage in the last {days} day(s) yet: {why}." if unpriced else
                            f"No usage in the last {days} day(s) yet."]
    if not total["served_requests_per_day"]:
        return "no_model_traffic", [f"Every request in the last {days} day(s) was answered from the cache: no "
                                    "model traffic to price an API with, so only self-hosting is drawn."]
    if not apis:
        return "no_api", ["No API to compare with: add priced provider cards to `cost.compare_with`."]
    api_by, host_by = {a.name: a for a in apis}, {h.name: h for h in hosts}
    sentences = [_pair_sentence(api_by[b["api"]], host_by[b["self_hosting"]], b, x_max) for b in crossings]
    return ("break_even" if any(b["in_range"] for b in crossings) else "no_crossing"), sentences


def _measured(report: dict[str, Any], lines: list[CostLine], x_max: float) -> dict[str, Any]:
    total = report["total"]
    today = total["served_requests_per_day"]
    return {"requests_per_day": today, "cached_requests_per_day": total["cached_requests_per_day"],
            "days": report["days"], "in_range": today <= x_max,
            "monthly_usd": [line.monthly_usd(today) for line in lines]}  # in the order of `lines`


def _measured_sentence(m: dict[str, Any], lines: list[CostLine], x_max: float) -> str:
    text = f"Measured volume: {count(m['requests_per_day'])} requests/day (average of the last {m['days']} day(s))"
    if m["cached_requests_per_day"]:
        text += f", plus {count(m['cached_requests_per_day'])} cache hits/day that cost nothing"
    if not m["in_range"]:
        return text + f", beyond this chart (up to {count(x_max)} requests/day)."
    costs = [f"{_label(line)} costs {money(y)}/month" for line, y in zip(lines, m["monthly_usd"])]
    if costs:
        text += ", where " + (", ".join(costs[:-1]) + " and " if len(costs) > 1 else "") + costs[-1]
    return text + "."


def _label(line: CostLine) -> str:
    return f"{line.name} via API" if line.kind == "api" else f"self-hosting on {line.name}"


def chart_series(report: dict[str, Any], up_to: float | None = None) -> dict[str, Any]:
    """What the chart draws, as numbers: x values, each line's y at them, the break-evens and today's volume.

    `up_to` fixes the x axis's end (requests/day); without it the axis spans today's volume and the
    break-evens (see the module's docstring).
    """
    if up_to is not None and not (up_to > 0 and math.isfinite(up_to)):
        raise ValueError("up_to must be a positive number of requests per day")
    apis, hosts, unpriced = _lines(report)
    lines = apis + hosts
    total = report["total"]
    found = [b["requests_per_day"] for b in total["break_even"] if b["requests_per_day"] is not None]
    x = _x_range(total["served_requests_per_day"], found, up_to)
    x_max = x[-1]
    crossings = _crossings(report, {h.name: h for h in hosts}, x_max)
    top = max([line.monthly_usd(v) for line in lines for v in (0.0, x_max)], default=0.0)
    state, sentences = _state(report, apis, hosts, unpriced, crossings, x_max)
    measured = _measured(report, lines, x_max)
    if state not in ("no_self_hosting", "no_usage", "no_model_traffic"):
        sentences.append(_measured_sentence(measured, lines, x_max))
    return {
        "title": TITLE, "scale": "linear", "state": state, "summary": " ".join(sentences), "sentences": sentences,
        "x_label": X_LABEL_CACHED if total["cached_requests_per_day"] else X_LABEL, "y_label": Y_LABEL,
        "x": x, "y_ticks": axis(top * 1.1) if top > 0 else [0.0, 1.0],
        "lines": [{"name": line.name, "kind": line.kind, "fixed_monthly_usd": line.fixed_monthly_usd,
                   "per_request_usd": line.per_request_usd, "y": [line.monthly_usd(v) for v in x]}
                  for line in lines],
        "unpriced_apis": unpriced, "break_even": crossings, "measured": measured,
    }
