"""`llm-gateway keys ...` and `llm-gateway usage`: thin clients of a running gateway's admin API.

They talk HTTP (stdlib only) so they work against any replica, and they use
the admin or master key from the environment, never from the command line
(where it would land in shell history and `ps`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from backends.contract.priority import PRIORITY_LABELS
from gateway.usage import DEFAULT_WINDOW_DAYS

URL_ENV = "LLM_GATEWAY_URL"


def _admin_key() -> str:
    key = os.environ.get("LLM_GATEWAY_ADMIN_KEY") or os.environ.get("LLM_GATEWAY_MASTER_KEY")
    if not key:
        print("error: set LLM_GATEWAY_ADMIN_KEY (or LLM_GATEWAY_MASTER_KEY) to use the admin API", file=sys.stderr)
        raise SystemExit(2)
    return key


def call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    url = args.url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {_admin_key()}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:
            message = exc.reason
        print(f"error: {exc.code}: {message}", file=sys.stderr)
        raise SystemExit(1)
    except urllib.error.URLError as exc:
        print(f"error: cannot reach {args.url}: {exc.reason}", file=sys.stderr)
        raise SystemExit(1)


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("alias", "owner", "rpm", "tpm", "budget_usd", "budget_period", "tier", "key", "priority", "weight",
                 "max_concurrent_requests"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    if getattr(args, "models", None) is not None:
        out["models"] = [m for m in args.models.split(",") if m] or None
    if getattr(args, "expires_in", None):
        out["expires_in_s"] = _duration(args.expires_in)
    return out


def _print(obj: Any, as_json: bool) -> None:
    if as_json or not isinstance(obj, dict) or "rows" not in obj and "data" not in obj:
        print(json.dumps(obj, indent=2))
        return
    rows = obj.get("data") or obj.get("rows") or []
    if not rows:
        print("(none)")
        return
    cols = list(rows[0])
    cols = [c for c in cols if c not in ("created_at",)]
    table = [cols] + [[("" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if "totals" in obj:
        print("totals: " + ", ".join(f"{k}={v}" for k, v in obj["totals"].items()))


def _imported_secret(where: str) -> str:
    """The secret to import, from stdin ('-') or the environment ('env:NAME'); exit 2 for anything else."""
    if where == "-":
        secret = sys.stdin.readline().strip()
    elif where.startswith("env:"):
        secret = os.environ.get(where[4:], "").strip()
        if not secret:
            print(f"error: the environment variable {where[4:]} is not set", file=sys.stderr)
            raise SystemExit(2)
    else:
        print("error: --import-key takes '-' (the secret on standard input) or 'env:NAME', not the secret "
              "itself: on the command line it would be visible to other users (ps) and kept in shell history",
              file=sys.stderr)
        raise SystemExit(2)
    if not secret:
        print("error: no secret on standard input", file=sys.stderr)
        raise SystemExit(2)
    return secret


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_command == "create":
        fields = _fields(args)
        if "key" in fields:
            fields["key"] = _imported_secret(fields["key"])
        created = call(args, "POST", "/admin/keys", fields)
        print(json.dumps(created, indent=2))
        print("Store the key now: it is not shown again.", file=sys.stderr)
    elif args.keys_command == "list":
        _print(call(args, "GET", "/admin/keys"), args.json)
    elif args.keys_command == "update":
        _print(call(args, "PATCH", f"/admin/keys/{args.id}", _fields(args)), True)
    elif args.keys_command == "revoke":
        _print(call(args, "DELETE", f"/admin/keys/{args.id}"), True)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    query = f"?days={args.days}" + (f"&key_id={args.key_id}" if args.key_id else "")
    query += (f"&tier={args.tier}" if args.tier else "") + ("&group_by=tier" if args.by_tier else "")
    _print(call(args, "GET", "/admin/usage" + query), args.json)
    return 0


def add_parsers(sub: Any) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8000"),
                       help=f"the gateway (env {URL_ENV})")

    def key_fields(p: argparse.ArgumentParser) -> None:
        p.add_argument("--alias", help="a name for people and logs (never a secret)")
        p.add_argument("--owner", help="who the key belongs to: a team, a user or a service")
        p.add_argument("--models", help="comma-separated routes this key may use (empty: all)")
        p.add_argument("--rpm", type=int, help="requests per minute, across every replica")
        p.add_argument("--tpm", type=int, help="tokens per minute (prompt and completion), across every replica")
        p.add_argument("--budget-usd", dest="budget_usd", type=float,
                       help="spend limit in USD per --budget-period; then 429 insufficient_quota")
        p.add_argument("--budget-period", dest="budget_period", choices=["daily", "monthly", "total"],
                       help="when the budget starts again (default monthly)")
        p.add_argument("--expires-in", dest="expires_in", help="e.g. 3600, 30m, 12h, 90d")
        p.add_argument("--tier", help="the key's routing tier (a route's `key_tier` rules pick deployments by it)")
        p.add_argument("--priority", choices=["interactive", "near-real-time", "batch"],
                       help="the best scheduling class the key's requests may use (default: interactive)")
        p.add_argument("--weight", type=float, help="the key's share among tenants waiting for a deployment")
        p.add_argument("--max-concurrent-requests", dest="max_concurrent_requests", type=int,
                       help="the key's requests in flight at once, on every replica together")

    keys = sub.add_parser("keys", help="create, list, update and revoke virtual API keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    create = ksub.add_parser("create", help="create a key (shown once)")
    key_fields(create)
    create.add_argument("--import-key", dest="key", metavar="-|env:NAME",
                        help="store an existing secret (issued elsewhere) instead of minting a new one, read "
                             "from standard input ('-') or an environment variable ('env:NAME'); never "
                             "from the command line, where ps and shell history would keep it")
    lst = ksub.add_parser("list", help="list keys (never their secrets)")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    update = ksub.add_parser("update", help="change a key's limits, models, budget or expiry")
    update.add_argument("id", help="the key's id (from `keys list`; not its secret)")
    key_fields(update)
    revoke = ksub.add_parser("revoke", help="revoke a key on every replica at once")
    revoke.add_argument("id", help="the key's id (from `keys list`; not its secret)")
    for p in (create, lst, update, revoke):
        common(p)
    keys.set_defaults(func=cmd_keys)

    usage = sub.add_parser("usage", help="requests, tokens and spend per key, route and day (and tier)")
    usage.add_argument("--days", type=int, default=DEFAULT_WINDOW_DAYS,
                       help=f"the window, in days up to today (default {DEFAULT_WINDOW_DAYS}, as `cost`)")
    usage.add_argument("--key-id", dest="key_id", help="only this key's usage")
    usage.add_argument("--tier", choices=PRIORITY_LABELS, help="only this tier's usage (batch: a batch's lines)")
    usage.add_argument("--by-tier", dest="by_tier", action="store_true", help="a row per tier")
    usage.add_argument("--json", action="store_true", help="machine-readable output")
    common(usage)
    usage.set_defaults(func=cmd_usage)
