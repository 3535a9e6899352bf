"""`llm-gateway cost`: the cost report, from a running gateway or offline from a file of usage rows.

Online it asks `/admin/cost` (admin key from the environment, like
`llm-gateway usage`). Offline (`--usage-file` with `--config`) it computes the
same report locally, with no gateway and no Redis: for planning ("what if we
had this traffic?") and for tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from gateway.cli_admin import URL_ENV, call
from gateway.cost import build_report, render_table
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


def _emit(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        sys.stdout.write(render_table(report))


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
    _emit(build_report(rows, config, cards, days), args.json)
    return 0


def main_online(args: argparse.Namespace) -> int:
    """The report of a running gateway, from its admin API."""
    _emit(call(args, "GET", f"/admin/cost?days={args.days or DEFAULT_DAYS}"), args.json)
    return 0


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
