"""From config text to a validated `GatewayConfig`, or a `ConfigError` whose every line names its line.

Kept apart from the schema (`routing.config`) and the checks that need a whole config
(`routing.config_checks`), so the schema imports neither.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from routing.config import ConfigError, GatewayConfig
from routing.config_checks import semantic_problems
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
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            where = format_loc(loc) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{source}:{line_of(root, loc) or '?'}: {where}: {msg}")
        raise ConfigError(source, problems) from exc
    problems = [f"{source}:{line_of(root, loc) or '?'}: {format_loc(loc)}: {msg}"
                for loc, msg in semantic_problems(config, known_cards)]
    if problems:
        raise ConfigError(source, problems)
    return config


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
