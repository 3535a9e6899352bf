"""Map a pydantic error location back to a line in the YAML file it came from.

Admins edit YAML by hand; "models.0.n_ctx: must be > 0" is much less useful
than "gateway.yaml:14: models[0].n_ctx: ...".
"""

from __future__ import annotations

from typing import Any, Sequence

import yaml


def compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def line_of(root: yaml.Node | None, loc: Sequence[Any]) -> int | None:
    """1-based line of the deepest node along `loc` that exists in the document."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                # Point at the mapping itself: the missing or unknown key belongs there.
                break
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def format_loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def duplicate_keys(root: yaml.Node | None) -> list[tuple[int, str, str, int]]:
    """(line, path, key, line of the first) for every mapping key that appears twice."""
    found: list[tuple[int, str, str, int]] = []
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(getattr(key, "value", ""))
                if name in seen:
                    found.append((key.start_mark.line + 1, format_loc(loc) or "(top level)", name, seen[name]))
                else:
                    seen[name] = key.start_mark.line + 1
                stack.append((value, (*loc, name)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*loc, i)) for i, child in enumerate(node.value))
    return sorted(found)
