"""`${...}` references in config values: the environment, with a default, or a file.

    ${NAME}            the environment variable NAME; an error if it is unset
    ${NAME:-default}   NAME, or `default` when NAME is unset or empty (as in a shell)
    ${file:/path}      the file's content without its trailing newline (a Kubernetes or Docker secret)
    $${                a literal `${`

Any string value may hold references, whole or inside other text (`http://${VLLM_HOST}:8000/v1`); a
number or a boolean may be given as one (`port: ${PORT:-8000}`) and is converted as the text would be.
Ordinary values are expanded when the config is read (at start-up and on every reload), so an unset
variable is a line-numbered config error. The secrets, `providers.*.api_key`, `redis.url`, `redis.cache_url`
and the values of upstream `headers` (a provider's or a deployment's: a custom auth header is one), are kept
as written and resolved only where they are used (`resolve`), so the config the admin API shows names a
secret and never holds one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

_REF = re.compile(r"\$\$\{|\$\{(?:file:(?P<file>[^}]+)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")
_WHOLE = re.compile(rf"^(?:{_REF.pattern})$")
Loc = tuple[Any, ...]


class Unresolved(ValueError):
    """A reference that has no value here: an unset variable without a default, or an unreadable file."""


def _value(m: re.Match[str], env: Mapping[str, str]) -> str:
    if m.group(0) == "$${":
        return "${"
    if m.group("file") is not None:
        path = m.group("file").strip()
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise Unresolved(f"${{file:{path}}}: cannot read the file: {reason}") from None
    name, default = m.group("name"), m.group("default")
    value = env.get(name)
    if value:
        return value
    if default is not None:
        return default
    if value is None:
        raise Unresolved(f"${{{name}}}: the environment variable {name} is not set "
                         f"(give a default as ${{{name}:-value}} if it may be)")
    return value


def expand(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with every reference replaced; Unresolved for the first that cannot be."""
    if "${" not in text:
        return text
    return _REF.sub(lambda m: _value(m, os.environ if env is None else env), text)


def is_reference(value: Any) -> bool:
    """A whole value that is one reference (how a secret must be given): not a literal."""
    return isinstance(value, str) and bool(_WHOLE.match(value)) and value != "$${"


def variable(value: Any) -> str | None:
    """The environment variable a whole-value `${NAME}` / `${NAME:-...}` reference names."""
    m = _WHOLE.match(value) if isinstance(value, str) else None
    return m.group("name") if m else None


def resolve(value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """A secret's value where it is used; None when it has none (unset, empty, or unreadable)."""
    if value is None:
        return None
    try:
        return expand(value, env) or None
    except Unresolved:
        return None


def problem(value: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """Why a secret's reference has no value here, or None when it has one."""
    if value is None:
        return None
    try:
        expand(value, env)
    except Unresolved as exc:
        return str(exc)
    return None


SECRET_PATHS: tuple[Loc, ...] = (("providers", "*", "api_key"), ("redis", "url"), ("redis", "cache_url"),
                                  ("providers", "*", "headers", "*"), ("deployments", "*", "headers", "*"))


def _secret(loc: Loc) -> bool:
    return any(len(loc) == len(p) and all(a == "*" or a == b for a, b in zip(p, loc)) for p in SECRET_PATHS)


def expand_tree(data: Any, env: Mapping[str, str] | None = None, loc: Loc = ()) -> tuple[Any, list[tuple[Loc, str]]]:
    """(the parsed config with every non-secret string expanded, [(location, problem)])."""
    problems: list[tuple[Loc, str]] = []

    def walk(node: Any, where: Loc) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*where, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*where, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node and not _secret(where):
            try:
                return expand(node, env)
            except Unresolved as exc:
                problems.append((where, str(exc)))
        return node

    return walk(data, loc), problems
