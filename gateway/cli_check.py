"""`llm-gateway check FILE`: everything wrong with a config in one round, before `serve` meets it.

Errors (exit 2): the file's own problems, line-numbered (YAML, references, schema, cross-references:
routing.config_file), a model card that does not parse, and a local model that cannot run here (no llama.cpp,
the `local` extra not installed; or weights that are not here, a package not installed, a file that does not
exist: `serve` would stop on it). Warnings (exit 0, or 2 with `--strict`): secrets with no value in this
environment, which may be set where the gateway runs. `--json` prints one object (`ok`, `errors`, `warnings`,
`summary`) for a CI step or an editor."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from backends.model_cards import ModelCard, ModelCardError, load_cards
from routing.config import ConfigError, GatewayConfig
from routing.config_checks import missing_secrets
from routing.config_file import load_config, read_config_text
from routing.local_models import local_model_problems


def add_parser(sub: Any) -> None:
    check = sub.add_parser("check", help="validate a config file: every problem at once, line-numbered; exit 2 "
                                         "on an error (with --strict, on a warning too)")
    check.add_argument("file", help="the YAML config file")
    check.add_argument("--strict", action="store_true", help="warnings (secrets unset here) fail the check too")
    check.add_argument("--json", action="store_true", help="one JSON object: ok, errors, warnings, summary")
    check.set_defaults(func=cmd_check)


def cards_for(file: str) -> dict[str, ModelCard]:
    from gateway.settings import ENV_CARDS, cards_dir

    cards = load_cards(cards_dir())
    if os.environ.get(ENV_CARDS):
        return cards
    try:  # a config may name its own cards directory
        config = load_config(file, known_cards=None)
    except ConfigError:
        return cards
    return load_cards(Path(config.server.model_cards_dir)) if config.server.model_cards_dir else cards


def local_model_errors(file: str, config: GatewayConfig, cards: dict[str, ModelCard],
                       model_index: list[int] | None = None) -> list[str]:
    """A line per local model that `serve` could not start (routing.local_models)."""
    text = read_config_text(file) if Path(file).is_file() else None
    return local_model_problems(config, cards, text, file, model_index)


def by_line(errors: list[str]) -> list[str]:
    """`file:line: ...` lines in the order of the file (a stable sort; lines without a number last)."""
    def line(error: str) -> float:
        parts = error.split(":", 2)
        return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else float("inf")
    return sorted(errors, key=line)


def cmd_check(args: argparse.Namespace) -> int:
    errors: list[str] = []
    warnings: list[str] = []
    summary: dict[str, int] = {}
    try:
        cards = cards_for(args.file)
        config = load_config(args.file, known_cards=set(cards))
    except ConfigError as exc:
        errors += exc.problems
        if exc.usable is not None:  # what did validate is checked against this machine in the same round
            errors = by_line(errors + local_model_errors(args.file, exc.usable, cards, exc.model_index))
            warnings += missing_secrets(exc.usable)
    except ModelCardError as exc:
        errors.append(f"model card error: {exc}")
    else:
        errors += local_model_errors(args.file, config, cards)
        warnings += missing_secrets(config)
        summary = {"local_models": len(config.models), "providers": len(config.providers),
                   "deployments": len(config.deployments), "routes": len(config.routes)}
    ok = not errors and not (args.strict and warnings)
    if args.json:
        print(orjson.dumps({"file": args.file, "ok": ok, "errors": errors, "warnings": warnings,
                            "summary": summary}, option=orjson.OPT_INDENT_2).decode())
        return 0 if ok else 2
    for line in errors:
        print(line, file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if ok:
        print(f"{args.file}: OK ({summary['local_models']} local model(s), {summary['providers']} provider(s), "
              f"{summary['deployments']} deployment(s), {summary['routes']} route(s))")
    elif not errors:
        print(f"{args.file}: {len(warnings)} warning(s), and --strict", file=sys.stderr)
    return 0 if ok else 2
