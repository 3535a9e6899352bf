"""Every option and argument of every `llm-gateway` command says what it is for (`--help` is the manual a
new user reads first), and the usage and cost reports share one default window."""

from __future__ import annotations

import argparse

import pytest

from gateway.cli import build_parser
from gateway.usage import DEFAULT_WINDOW_DAYS

pytestmark = pytest.mark.unit


def parsers(parser: argparse.ArgumentParser, path: str = "llm-gateway") -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += parsers(sub, f"{path} {name}")
    return out


def test_every_argument_has_help() -> None:
    silent = [f"{path} {'/'.join(a.option_strings) or a.dest}"
              for path, p in parsers(build_parser()) for a in p._actions
              if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))
              and not a.help]
    assert silent == []


def test_usage_and_cost_default_to_the_same_window() -> None:
    parser = build_parser()
    assert parser.parse_args(["usage"]).days == DEFAULT_WINDOW_DAYS
    from gateway.cli_cost import DEFAULT_DAYS
    from gateway.routes.admin_cost import DEFAULT_DAYS as ADMIN_DEFAULT

    assert DEFAULT_DAYS == ADMIN_DEFAULT == DEFAULT_WINDOW_DAYS
