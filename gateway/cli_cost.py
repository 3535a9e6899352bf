"""`llm-gateway cost`: the cost report, from a running gateway or offline from a file of usage rows.

Online it asks `/admin/cost` (admin key from the environment, like
`llm-gateway usage`). Offline (`--usage-file` with `--config`) it computes the
same report locally, with no gateway and no Redis: for planning ("what if we
had this traffic?") and for tests. `--chart FILE.svg` also draws the
break-even chart (gateway/cost_chart.py) from the same numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlencode

from gateway.cli_admin import URL_ENV, call
from gateway.cost import build_report, render_table
from gateway.cost_chart import render_svg
from gateway.cost_series import chart_series
from gateway.settings import ENV_CONFIG, load_config_and_cards
from gateway.usage import DEFAULT_WINDOW_DAYS

DEFAULT_DAYS = DEFAULT_WINDOW_DAYS


def _days(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 400:
        raise argparse.ArgumentTypeError("must be between 1 and 400")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--days", type=_days, default=None,
                   help=f"the period, in days (online default {DEFAULT_DAYS}; offline: the days in the file)")
    p.add_argument("--json", action="store_true", help="the full report as JSON")
    p.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                   help=f"the gateway (env {URL_ENV})")
    p.add_argument("--usage-file", dest="usage_file",
                   help="offline: a JSON list of usage rows {day, route, deployment, tier, requests, prompt_tokens, "
                        "completion_tokens, cost_usd} (or an object with 'rows'; a row without a tier is "
                        "interactive)")
    p.add_argument("--config", help=f"offline: the gateway config with the `cost:` section (env {ENV_CONFIG})")
    p.add_argument("--chart", metavar="FILE.svg", type=_chart_path,
                   help="also write the break-even chart (monthly cost against requests/day, one line per option) "
                        "to FILE.svg, or to stdout with '-' (then the report is not printed); SVG only: for a PNG, "
                        "convert it (e.g. rsvg-convert -o chart.png chart.svg)")
    p.add_argument("--up-to", dest="up_to", type=_up_to, metavar="REQ_PER_DAY",
                   help="where the chart's x axis ends, in requests/day (default: around the measured volume and "
                        "the break-even)")


def _chart_path(text: str) -> str:
    if text != "-" and not text.lower().endswith(".svg"):
        raise argparse.ArgumentTypeError("the chart is SVG only: give a FILE.svg, or - for stdout "
                                         "(convert it for a PNG, e.g. rsvg-convert -o chart.png chart.svg)")
    return text


def _up_to(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1e15:
        raise argparse.ArgumentTypeError("must be a positive number of requests per day")
    return value


def _emit(report: dict[str, Any], args: argparse.Namespace) -> int:
    """The report on stdout, and the chart where --chart says (stdout alone with '-')."""
    if "chart" not in report:  # a gateway from before the chart: the same numbers, computed here
        report = {**report, "chart": chart_series(report, args.up_to)}
    if args.chart:
        svg = render_svg(report["chart"])
        if args.chart == "-":
            sys.stdout.write(svg)
            return 0
        try:
            Path(args.chart).write_text(svg, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.chart}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"chart: {args.chart}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render_table(report))
    return 0


def read_usage(path: str) -> list[dict[str, Any]]:
    """Usage rows from a file, or exit 2 saying what is wrong with it."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2)
    except ValueError as exc:
        print(f"error: {path}: invalid JSON: {exc}", file=sys.stderr)
        raise SystemExit(2)
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        print(f"error: {path}: expected a JSON list of usage rows", file=sys.stderr)
        raise SystemExit(2)
    return rows


def select_days(rows: list[dict[str, Any]], days: int | None) -> tuple[list[dict[str, Any]], int]:
    """Without `days`, the file's own span; with it, the last `days` days up to the file's latest day."""
    dated = sorted({str(r["day"]) for r in rows if r.get("day")})
    if days is None:
        if not dated:
            return rows, 1
        first, last = dt.date.fromisoformat(dated[0]), dt.date.fromisoformat(dated[-1])
        return rows, (last - first).days + 1
    if not dated:
        return rows, days
    start = (dt.date.fromisoformat(dated[-1]) - dt.timedelta(days=days - 1)).isoformat()
    return [r for r in rows if str(r.get("day", "")) >= start], days


def main_offline(args: argparse.Namespace) -> int:
    """The report from a usage file and a config, computed here."""
    config_path = args.config or os.environ.get(ENV_CONFIG)
    if not config_path:
        print("error: --usage-file needs --config (the config holding the `cost:` section)", file=sys.stderr)
        return 2
    config, cards = load_config_and_cards(config_path)
    try:
        rows, days = select_days(read_usage(args.usage_file), args.days)
    except (KeyError, ValueError) as exc:
        print(f"error: {args.usage_file}: bad 'day' in a row: {exc}", file=sys.stderr)
        return 2
    report = build_report(rows, config, cards, days)
    return _emit({**report, "chart": chart_series(report, args.up_to)}, args)


def main_online(args: argparse.Namespace) -> int:
    """The report of a running gateway, from its admin API."""
    query = {"days": args.days or DEFAULT_DAYS, **({"up_to": repr(args.up_to)} if args.up_to else {})}
    return _emit(call(args, "GET", f"/admin/cost?{urlencode(query)}"), args)


def cmd_cost(args: argparse.Namespace) -> int:
    if args.usage_file:
        return main_offline(args)
    if args.config:
        print("error: --config is for the offline mode; add --usage-file FILE.json", file=sys.stderr)
        return 2
    return main_online(args)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("cost", help="spend now vs provider APIs and self-hosting, with the break-even volume")
    add_arguments(p)
    p.set_defaults(func=cmd_cost)


def main(argv: Sequence[str] | None = None) -> int:
    """`llm-gateway cost` on its own (usable before it is registered in gateway/cli.py)."""
    parser = argparse.ArgumentParser(prog="llm-gateway cost", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return cmd_cost(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
