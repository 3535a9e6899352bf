"""From config text to a validated `GatewayConfig`, or a `ConfigError` whose every line names its line.

Kept apart from the schema (`routing.config`) and the checks that span its parts
(`routing.config_checks`), so the schema imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from routing.config import ConfigError, GatewayConfig
from routing.config_checks import semantic_problems
from routing.config_env import expand_tree
from routing.config_partial import salvage
from routing.yaml_lines import compose, duplicate_keys, format_loc, line_of


def parse_config(text: str, source: str = "<config>", known_cards: set[str] | None = None) -> GatewayConfig:
    """Validate YAML text; raise ConfigError with `source:line: field: message` lines.

    With `known_cards`, every card reference must name an existing model card.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{source}:{line}: invalid YAML: {problem}"]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{source}:1: the top level must be a mapping"])
    root = compose(text)
    duplicates = duplicate_keys(root)
    if duplicates:  # YAML lets a second `routes:` replace the first without a word; we do not
        raise ConfigError(source, [f"{source}:{line}: {where}: {key!r} is given twice (first on line {first})"
                                   for line, where, key, first in duplicates])
    data, unresolved = expand_tree(data)
    # Every problem in one round: the references that have no value, the schema's (except at those places:
    # a value left unexpanded says nothing more), and the checks that span parts, run on the parts that
    # passed the schema when others did not. In the order of the file.
    problems = [(loc, msg) for loc, msg in unresolved]
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        places = {loc for loc, _ in unresolved}
        for err in exc.errors(include_url=False):
            if tuple(err["loc"]) not in places:
                problems.append((tuple(err["loc"]), err["msg"].removeprefix("Value error, ")))
        partial = salvage(data, exc)
        if partial is not None:
            problems += [(partial.file_loc(loc), msg)
                         for loc, msg in semantic_problems(partial.config, known_cards, partial.broken)]
        raise ConfigError(source, _lines(source, root, problems), partial.config if partial else None,
                          partial.kept.get("models") if partial else None) from exc
    problems += semantic_problems(config, known_cards)
    if problems:
        raise ConfigError(source, _lines(source, root, problems), config)
    return config


def _lines(source: str, root: Any, problems: list[tuple[tuple[Any, ...], str]]) -> list[str]:
    """`source:line: field: message` for each problem, by line (a stable sort: one line's keep their order)."""
    numbered = [(line_of(root, loc), loc, msg) for loc, msg in problems]
    numbered.sort(key=lambda p: p[0] if p[0] is not None else float("inf"))
    return [f"{source}:{line or '?'}: {format_loc(loc) or '(top level)'}: {msg}" for line, loc, msg in numbered]


def load_config(path: str | Path | None, known_cards: set[str] | None = None) -> GatewayConfig:
    if path is None:
        return GatewayConfig()
    return parse_config(read_config_text(path), str(path), known_cards)


def read_config_text(path: str | Path) -> str:
    """The file as UTF-8 text, or a ConfigError that names the line of the first byte that is not."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), [f"{p}: cannot read: {exc.strerror}"]) from exc
    return decode_config(raw, str(p))


def decode_config(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(source, [f"{source}:{line}: the file is not UTF-8 text (byte 0x{raw[exc.start]:02x} "
                                   f"at offset {exc.start})"]) from None
