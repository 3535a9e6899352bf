"""Manifest trees to Helm template text.

A transform puts placeholder tokens into a parsed manifest where the chart takes a value: an inline
token stands for one `{{ action }}` (a scalar), a block token for whole lines (a mapping key whose value
is None, or a list item), rendered at the indentation the token's line has. The tree is dumped as YAML
and the tokens are replaced, so the template keeps the manifest's structure exactly and only the
values the chart owns become actions.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import yaml

Block = Callable[[int], str]  # indentation (columns) -> lines, unindented; the caller indents them

_TOKEN = re.compile(r"HELM[IB]\d{4}X")


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key, multi-line strings as literal blocks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_Dumper.add_representer(str, _represent_str)


def dump(node: Any) -> str:
    return yaml.dump(node, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100_000,
                     allow_unicode=True)


class Template:
    """The tokens of one template file and what each becomes."""

    def __init__(self) -> None:
        self._inline: dict[str, str] = {}
        self._blocks: dict[str, Block] = {}

    def _token(self, kind: str) -> str:
        return f"HELM{kind}{len(self._inline) + len(self._blocks):04d}X"

    def value(self, action: str) -> str:
        """A scalar: `{{ action }}` in place of the token."""
        token = self._token("I")
        self._inline[token] = "{{ " + action + " }}"
        return token

    def block(self, render: Block) -> str:
        """Lines in place of the token's line (a `TOKEN: null` key or a `- TOKEN` item)."""
        token = self._token("B")
        self._blocks[token] = render
        return token

    def render(self, node: Any, condition: str | None = None) -> str:
        text = dump(node)
        if "{{" in text or "}}" in text:
            raise ValueError("a manifest holds '{{' or '}}', which Helm would read as template actions")
        text = self._expand(text)
        if condition:
            text = "{{- if " + condition + " }}\n" + text + "{{- end }}\n"
        return text

    def _expand(self, text: str) -> str:
        for _ in range(100):  # blocks may hold tokens of their own
            if not _TOKEN.search(text):
                return text
            out = []
            for line in text.splitlines():
                out.extend(self._line(line))
            text = "\n".join(out) + "\n"
        raise ValueError("template tokens nest too deep")

    def _line(self, line: str) -> list[str]:
        m = re.fullmatch(r"(\s*)(?:(HELMB\d{4}X): null|- (HELMB\d{4}X))", line)
        if m:
            indent = len(m.group(1))
            rendered = self._blocks[m.group(2) or m.group(3)](indent)
            return [(" " * indent + part) if part.strip() else part for part in rendered.splitlines()]
        return [_TOKEN.sub(lambda t: self._inline[t.group(0)], line)]


# ---------------------------------------------------------------------------------------------
# Blocks the transforms use

def lines(text: str) -> Block:
    """Fixed lines (template actions and YAML)."""
    return lambda indent: text


def yaml_of(key: str, expr: str) -> Block:
    """`key:` and the value of `expr` as YAML below it."""
    return lambda i: f"{key}:\n  {{{{- toYaml {expr} | nindent {i + 2} }}}}"


def yaml_items(expr: str) -> Block:
    """The entries of `expr` (a list's items, or a mapping's keys) spliced in here, if any."""
    return lambda i: f"{{{{- with {expr} }}}}\n{{{{- toYaml . | nindent {i} }}}}\n{{{{- end }}}}"


def optional_yaml(key: str, expr: str) -> Block:
    """`key:` with the value of `expr`, only when it is set (not empty)."""
    return lambda i: (f"{{{{- with {expr} }}}}\n{key}:\n  {{{{- toYaml . | nindent {i + 2} }}}}\n"
                      f"{{{{- end }}}}")


def include(name: str) -> Block:
    return lambda i: f'{{{{- include "{name}" . | nindent {i} }}}}'


def when(condition: str, node: Any) -> Block:
    """`node` (a list of items, or a mapping) only when `condition` holds; it may hold tokens."""
    return lambda i: f"{{{{- if {condition} }}}}\n{dump(node).rstrip()}\n{{{{- end }}}}"
