"""The cost report: what the traffic costs now, and what it would cost on a provider API or self-hosted.

Pure computation over usage rows (no I/O), so the admin endpoint, the CLI and
offline planning give the same numbers. The model is "The Cost Equation": an
API costs per request, self-hosting a fixed amount per month (instances plus
people), so above some volume self-hosting wins. Answers from the cache
(deployment "cache") cost nothing under any option, so the alternatives price
only the traffic that reached a model.

Rows carry their tier (interactive, batch; a row without one is interactive,
as all usage kept before tiers is): the report shows each tier's volume and
spend on its own, besides the routes and the total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from backends.contract.priority import Priority
from backends.model_cards import ModelCard
from routing.config import GatewayConfig

CACHE = "cache"
INTERACTIVE = "interactive"
_COUNTS = ("requests", "prompt_tokens", "completion_tokens")
_TIER_ORDER = {p.label: int(p) for p in Priority}  # interactive first, batch last; an unknown tier after them


def money(x: float) -> str:
    """Whole dollars for big sums, cents for small ones, 3 digits below a dollar."""
    if x >= 100:
        return f"${x:,.0f}"
    if x >= 1:
        return f"${x:,.2f}"
    return "$0" if x == 0 else f"${x:.3g}"


def count(x: float) -> str:
    """Requests or tokens: whole numbers with thousands separators, 3 digits for small fractions."""
    return f"{x:,.0f}" if x >= 100 or x == int(x) else f"{x:,.3g}"


@dataclass(frozen=True)
class CostLine:
    """One option's monthly cost as a function of volume: `fixed + per_request x requests/day x days/month`.

    The one place the economics live: the text report, the break-even and the chart all read it. An API is
    all per-request (card prices times the measured tokens per request); self-hosting is all fixed (instances
    around the clock plus operations), whatever the volume.
    """

    name: str
    kind: str  # "api" or "self_hosting"
    fixed_monthly_usd: float
    per_request_usd: float
    days_per_month: float

    def monthly_usd(self, requests_per_day: float) -> float:
        return self.fixed_monthly_usd + self.per_request_usd * requests_per_day * self.days_per_month

    def break_even(self, other: "CostLine") -> float | None:
        """The requests/day at which both cost the same; None when they never meet at a volume >= 0."""
        slope = (self.per_request_usd - other.per_request_usd) * self.days_per_month
        if not slope:
            return None
        x = (other.fixed_monthly_usd - self.fixed_monthly_usd) / slope
        return x if x >= 0 else None


def api_line(card: str, cost_per_request_usd: float | None, days_per_month: float) -> CostLine | None:
    """An API's line; None while its cost per request is unknown (no request reached a model yet)."""
    if cost_per_request_usd is None:
        return None
    return CostLine(card, "api", 0.0, cost_per_request_usd, days_per_month)


def hosting_line(option: dict[str, Any], days_per_month: float) -> CostLine:
    """A self-hosting option's line (an entry of the report's `self_hosting`): flat, no per-request part."""
    return CostLine(option["name"], "self_hosting", option["monthly_usd"], 0.0, days_per_month)


def _sum(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    out = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "spend_usd": 0.0}
    for r in rows:
        for k in _COUNTS:
            out[k] += int(r.get(k) or 0)
        out["spend_usd"] += float(r.get("cost_usd") or 0.0)
    return out


def _apis(config: GatewayConfig, cards: dict[str, ModelCard], notes: list[str]) -> list[dict[str, Any]]:
    """The priced provider cards of `cost.compare_with` (ids or aliases); the others become notes."""
    by_name = {name: card for card in cards.values() for name in card.names}
    out = []
    for name in config.cost.compare_with:
        card = by_name.get(name)
        if card is None:
            notes.append(f"cost.compare_with: no model card {name!r}; skipped")
        elif card.pricing is None:
            notes.append(f"cost.compare_with: card {card.id!r} has no pricing; skipped")
        else:
            out.append({"card": card.id, "input_per_mtok": card.pricing.input_per_mtok,
                        "output_per_mtok": card.pricing.output_per_mtok})
    return out


def _hosting(config: GatewayConfig, notes: list[str]) -> list[dict[str, Any]]:
    """Each self-hosting option's fixed monthly cost: instances around the clock plus operations."""
    deployments = {d.name: d for d in config.deployments}
    dpm = config.cost.days_per_month
    names = [o.deployment for o in config.cost.self_hosting]
    out = []
    for i, opt in enumerate(config.cost.self_hosting):
        name = opt.deployment if names.count(opt.deployment) == 1 else f"{opt.deployment}#{i + 1}"
        dep = deployments.get(opt.deployment)
        if dep is None:
            notes.append(f"cost.self_hosting: {opt.deployment!r} is not a deployment of this config")
        infra = opt.instance_price_per_hour * 24 * dpm * opt.instances
        throughput = dep.throughput_tokens_per_s if dep is not None else None
        out.append({"name": name, "deployment": opt.deployment, "instance_price_per_hour": opt.instance_price_per_hour,
                    "instances": opt.instances, "monthly_ops_cost": opt.monthly_ops_cost, "infra_monthly_usd": infra,
                    "monthly_usd": infra + opt.monthly_ops_cost,
                    "capacity_tokens_per_s": throughput * opt.instances if throughput else None})
    return out


def _group(rows: list[dict[str, Any]], days: int, dpm: float, apis: list[dict[str, Any]],
           hosting: list[dict[str, Any]]) -> dict[str, Any]:
    """Volume, spend, alternatives, break-even and a recommendation for one slice of the traffic."""
    t = _sum(rows)
    served = _sum(r for r in rows if r.get("deployment") != CACHE)
    n = t["requests"]
    g: dict[str, Any] = {
        **t, "requests_per_day": n / days,
        "prompt_tokens_per_day": t["prompt_tokens"] / days, "completion_tokens_per_day": t["completion_tokens"] / days,
        "prompt_tokens_per_request": t["prompt_tokens"] / n if n else 0.0,
        "completion_tokens_per_request": t["completion_tokens"] / n if n else 0.0,
        "cached_requests_per_day": (n - served["requests"]) / days,
        "served_requests_per_day": served["requests"] / days,
        "spend_per_month_usd": t["spend_usd"] * dpm / days,
    }
    g["apis"], api_lines = [], []
    for api in apis:
        per_req = ((served["prompt_tokens"] * api["input_per_mtok"] + served["completion_tokens"]
                    * api["output_per_mtok"]) / 1e6 / served["requests"]) if served["requests"] else None
        line = api_line(api["card"], per_req, dpm)
        api_lines.append(line)
        g["apis"].append({"card": api["card"], "cost_per_request_usd": per_req,
                          "monthly_usd": line.monthly_usd(g["served_requests_per_day"]) if line else 0.0})
    host_lines = [hosting_line(h, dpm) for h in hosting]
    g["break_even"] = [{"api": a["card"], "self_hosting": h.name,
                        "requests_per_day": line.break_even(h) if line else None}
                       for a, line in zip(g["apis"], api_lines) for h in host_lines]
    g["recommendation"] = _recommend(g, hosting, days)
    return g


def _recommend(g: dict[str, Any], hosting: list[dict[str, Any]], days: int) -> str:
    """One sentence a person can act on, with the numbers behind it."""
    if not g["requests"]:
        return f"No traffic in the last {days} day(s): nothing to compare yet."
    if not g["served_requests_per_day"]:
        return "Every request was answered from the cache: no model cost to compare."
    now = f" Measured spend now: {money(g['spend_per_month_usd'])}/month."
    if g["cached_requests_per_day"]:
        now += f" Cache hits ({count(g['cached_requests_per_day'])}/day) are free either way."
    rpd = count(g["served_requests_per_day"])
    api = min(g["apis"], key=lambda a: a["monthly_usd"], default=None)
    host = min(hosting, key=lambda h: h["monthly_usd"], default=None)
    if api is None and host is None:
        return ("No alternatives configured: add `cost.compare_with: [<provider card id>]` and/or "
                "`cost.self_hosting: [{deployment, instance_price_per_hour, instances, monthly_ops_cost}]` "
                "to the config." + now)
    if host is None:
        return (f"At {rpd} requests/day, {api['card']} via API costs {money(api['monthly_usd'])}/month; "
                f"add `cost.self_hosting` to compare with running a model yourself." + now)
    if api is None:
        return (f"At {rpd} requests/day, self-hosting on {host['name']} costs {money(host['monthly_usd'])}/month; "
                f"add priced provider cards to `cost.compare_with` to compare with an API." + now)
    a, s = api["monthly_usd"], host["monthly_usd"]
    be = next(b["requests_per_day"] for b in g["break_even"]
              if b["api"] == api["card"] and b["self_hosting"] == host["name"])
    text = (f"At {rpd} requests/day, {api['card']} via API costs {money(a)}/month and self-hosting on "
            f"{host['name']} costs {money(s)}/month: ")
    if a < s:
        text += f"stay on the API (cheaper by {money(s - a)}/month)"
        text += f"; self-hosting wins above {count(be)} requests/day." if be else "."
    elif s < a:
        ratio = f", {a / s:.2f}x cheaper" if s > 0 else ""
        text += f"self-host (cheaper by {money(a - s)}/month{ratio}); the API wins below {count(be)} requests/day."
    else:
        text += "they cost the same; pick on latency, privacy and effort."
    return text + now


def build_report(rows: list[dict[str, Any]], config: GatewayConfig, cards: dict[str, ModelCard],
                 days: int) -> dict[str, Any]:
    """The report over `days` days of usage rows {day, route, deployment, tier, requests, tokens, cost_usd}."""
    if days < 1:
        raise ValueError("days must be at least 1")
    dpm = config.cost.days_per_month
    notes: list[str] = []
    apis, hosting = _apis(config, cards, notes), _hosting(config, notes)
    seen_days = sorted({str(r["day"]) for r in rows if r.get("day") and r.get("requests")})
    routes: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in rows:
        routes.setdefault(str(r.get("route", "-")), {}).setdefault(str(r.get("deployment", "-")), []).append(r)
    out_routes = []
    for route in sorted(routes):
        deps = routes[route]
        group = _group([r for rs in deps.values() for r in rs], days, dpm, apis, hosting)
        group["deployments"] = [{"deployment": d, **_group(deps[d], days, dpm, apis, hosting)} for d in sorted(deps)]
        out_routes.append({"route": route, **group})
    total = _group(rows, days, dpm, apis, hosting)
    tiers: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        tiers.setdefault(str(r.get("tier") or INTERACTIVE), []).append(r)
    out_tiers = [{"tier": t, **_group(tiers[t], days, dpm, apis, hosting)}
                 for t in sorted(tiers, key=lambda t: (_TIER_ORDER.get(t, len(_TIER_ORDER)), t))]
    if seen_days and len(seen_days) < days:
        notes.append(f"traffic on {len(seen_days)} of {days} days; per-day figures average over all {days}")
    tokens_per_s = (total["prompt_tokens"] + total["completion_tokens"]) / days / 86400
    for h in hosting:
        if h["capacity_tokens_per_s"] and tokens_per_s > h["capacity_tokens_per_s"]:
            notes.append(f"self-hosting on {h['name']}: the traffic averages {tokens_per_s:,.0f} tokens/s, more than "
                         f"{h['instances']} instance(s) serve ({h['capacity_tokens_per_s']:,.0f} tokens/s)")
    return {"days": days, "days_per_month": dpm, "days_with_traffic": len(seen_days),
            "first_day": seen_days[0] if seen_days else None, "last_day": seen_days[-1] if seen_days else None,
            "compare_with": apis, "self_hosting": hosting, "total": total, "routes": out_routes, "tiers": out_tiers,
            "notes": notes, "recommendation": total["recommendation"]}


def _align(table: list[list[str]], left: tuple[int, ...] = (0,)) -> list[str]:
    """Left-align the labels, right-align the numbers, so digits line up."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in table]


def _volume_row(label: str, g: dict[str, Any]) -> list[str]:
    return [label, count(g["requests_per_day"]), count(g["prompt_tokens_per_day"]),
            count(g["completion_tokens_per_day"]),
            f"{count(g['prompt_tokens_per_request'])} / {count(g['completion_tokens_per_request'])}",
            money(g["spend_usd"]), money(g["spend_per_month_usd"])]


def render_table(report: dict[str, Any]) -> str:
    """The report for people: volume and spend, the alternatives, break-even, then what to do."""
    days, dpm, total = report["days"], report["days_per_month"], report["total"]
    lines = [f"Cost report: last {days} day(s), a month = {dpm:g} days", ""]
    vol = [["ROUTE / DEPLOYMENT", "REQ/DAY", "PROMPT TOK/DAY", "COMPL TOK/DAY", "TOK/REQ IN / OUT",
            f"SPEND {days}D", "SPEND/MONTH"]]
    for route in report["routes"]:
        vol.append(_volume_row(route["route"], route))
        vol += [_volume_row("  " + d["deployment"], d) for d in route["deployments"]]
    vol += [_volume_row(f"tier {t['tier']}", t) for t in report.get("tiers", ())]
    vol.append(_volume_row("TOTAL", total))
    lines += _align(vol)
    alt = [["ALTERNATIVE FOR THE SAME TRAFFIC", "PER MONTH", "HOW"],
           ["measured spend now", money(total["spend_per_month_usd"]), ""]]
    for api, meta in zip(total["apis"], report["compare_with"]):
        per_req = "-" if api["cost_per_request_usd"] is None else money(api["cost_per_request_usd"])
        alt.append([f"API {api['card']}", money(api["monthly_usd"]),
                    f"{per_req}/request (${meta['input_per_mtok']:g} in, ${meta['output_per_mtok']:g} out per 1M)"])
    for h in report["self_hosting"]:
        alt.append([f"self-host {h['name']}", money(h["monthly_usd"]),
                    f"{h['instances']} x ${h['instance_price_per_hour']:g}/h x 24 x {dpm:g} = "
                    f"{money(h['infra_monthly_usd'])} + {money(h['monthly_ops_cost'])} ops"])
    lines += ["", *_align(alt, left=(0, 2))]
    if total["break_even"]:
        be = [["BREAK-EVEN: API", "VS SELF-HOSTING", "REQ/DAY ABOVE WHICH SELF-HOSTING WINS"]]
        be += [[b["api"], b["self_hosting"], "-" if b["requests_per_day"] is None else count(b["requests_per_day"])]
               for b in total["break_even"]]
        lines += ["", *_align(be, left=(0, 1))]
    lines += [""] + [f"note: {n}" for n in report["notes"]]
    lines.append(f"Recommendation: {report['recommendation']}")
    if len(report["routes"]) > 1:
        lines += [f"  route {r['route']}: {r['recommendation']}" for r in report["routes"]]
    return "\n".join(lines) + "\n"
