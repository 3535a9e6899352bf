"""Which config values are secrets, masked wherever the admin API shows a config: as data or as the file's text.

One rule for both (`mask_value`): a `${ENV}` reference is kept (it names a secret, it is not one); a literal
is masked when its field sounds secret (key, token, secret, password), when it is an upstream header's value
(any header may be a credential), and, whatever its field, in the password part of a URL.

The text form is what the console's editor starts from: the file as written (comments, order, references),
each secret scalar replaced by the same mask. `restore_masked` is its way back: a mask left as it was in an
edited text gets the running file's value again, so an edit never needs the secrets and never loses them; a
mask that no longer matches any (the value moved) is a line-numbered problem, never written as `***`.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import yaml

from routing.config_env import is_reference
from routing.yaml_lines import compose, format_loc

MASK = "***"
_SECRET_NAMES = re.compile(r"(key|token|secret|password)", re.I)
_URL_PASSWORD = re.compile(r"(?i)^([a-z][a-z0-9+.\-]*://[^/@:]*:)[^/@]+@")
_STR = "tag:yaml.org,2002:str"
Loc = tuple[Any, ...]


def mask_value(value: str, key: str, in_headers: bool) -> str:
    """The value as the admin API shows it: `key` is its field's name (a list item's: its list's)."""
    if is_reference(value):
        return value
    if in_headers or _SECRET_NAMES.search(key):
        return MASK
    return _URL_PASSWORD.sub(rf"\1{MASK}@", value)


def _is_mask(value: str, key: str, in_headers: bool) -> bool:
    """Is this what `mask_value` shows in place of a secret (rather than a value of its own)?"""
    if in_headers or _SECRET_NAMES.search(key):
        return value == MASK
    m = _URL_PASSWORD.match(value)
    return m is not None and value[len(m.group(1)):m.end() - 1] == MASK


def mask_secrets(value: Any, key: str = "") -> Any:
    """A parsed config (or any part of it) with its secrets masked."""
    if isinstance(value, dict):
        if key == "headers":  # any header may be a credential: mask_value's rule for them, non-strings too
            return {k: mask_value(v, k, True) if isinstance(v, str) else MASK for k, v in value.items()}
        return {k: mask_secrets(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        return mask_value(value, key, False)
    return value


def _scalars(root: yaml.Node | None) -> Iterator[tuple[Loc, yaml.ScalarNode, str, bool]]:
    """(location, node, field name, in a headers mapping) of every string scalar that is a value."""
    stack: list[tuple[yaml.Node, Loc, str, bool]] = [(root, (), "", False)] if root is not None else []
    while stack:
        node, loc, key, in_headers = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = str(getattr(k, "value", ""))
                stack.append((v, (*loc, name), name, key == "headers"))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*loc, i), key, False) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.ScalarNode) and (node.tag == _STR or in_headers):
            yield loc, node, key, in_headers


def _quoted(value: str) -> str:
    """A value as a YAML flow scalar that reads back as itself."""
    return yaml.safe_dump(value, default_style="'", width=1 << 30).removesuffix("\n...\n").rstrip("\n")


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with each (start, end) span replaced; spans may repeat (an alias's node is its anchor's)."""
    out, at = [], 0
    for start, end, new in sorted(set(spans)):
        if start < at:
            continue
        out += [text[at:start], new]
        at = end
    return "".join(out) + text[at:]


def masked_text(text: str) -> str:
    """The config text with every secret scalar replaced by its masked value (YAML that parses)."""
    spans = []
    for _, node, key, in_headers in _scalars(compose(text)):
        shown = mask_value(node.value, key, in_headers)
        if shown != node.value:
            spans.append((node.start_mark.index, node.end_mark.index, _quoted(shown)))
    return _replace(text, spans)


def restore_masked(text: str, running: str | None, source: str) -> tuple[str, list[str]]:
    """(the edited `text` with each mask put back to the `running` file's value at the same place, the
    `source:line: field: ...` problems of masks that match none). YAML errors are left to the parser."""
    try:
        new_root = compose(text)
        old_root = compose(running) if running else None
    except yaml.YAMLError:
        return text, []
    old: dict[Loc, tuple[str, str]] = {}  # location -> (masked value, its source text)
    if running is not None:
        for loc, node, key, in_headers in _scalars(old_root):
            shown = mask_value(node.value, key, in_headers)
            if shown != node.value:
                old[loc] = (shown, running[node.start_mark.index:node.end_mark.index])
    spans, problems = [], []
    for loc, node, key, in_headers in _scalars(new_root):
        was = old.get(loc)
        if was is not None and node.value == was[0]:
            spans.append((node.start_mark.index, node.end_mark.index, was[1]))
        elif _is_mask(node.value, key, in_headers):
            # Still a mask, where the running file has no secret to match it: it would be written as is.
            problems.append((node.start_mark.line + 1, node.start_mark.column, loc))
    lines = [f"{source}:{line}: {format_loc(loc)}: {MASK!r} stands for a secret of the running config, and "
             "none is at this place (was it moved or renamed?): write the value here, or a ${ENV_VAR} reference"
             for line, _, loc in sorted(problems, key=lambda p: p[:2])]
    return _replace(text, spans), lines
