"""The parts of a config that pass the schema, when the whole does not: so the checks that span parts
(routing/config_checks.py) still run, and one round reports every problem.

A part is one entry of a list section (a model, a deployment, a route), one provider, or a whole other
top-level key (`server`, `redis`, ...). The parts with a schema error are left out and the rest is validated
again. What was left out is remembered by name (`Broken`): a reference to it is no dangling reference (the
part exists; its own error says what is wrong with it), and a check that would need its contents is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from pydantic import ValidationError

from routing.config import GatewayConfig, explicit_models

Loc = tuple[Any, ...]

_LISTS = {"models": "card", "deployments": "name", "routes": "name"}  # list section -> the field naming an entry
_MAPS = ("providers",)  # mapping sections: the key names the entry
_SECTIONS = (*_LISTS, *_MAPS)


@dataclass
class Broken:
    """Names of the parts left out for their schema errors, per section; a section itself left out (not a
    list, not a mapping) stands for every name."""

    names: dict[str, set[str]] = field(default_factory=dict)
    whole: set[str] = field(default_factory=set)

    def named(self, section: str) -> set[str]:
        return self.names.get(section, set())

    def covers(self, section: str, name: Any) -> bool:
        return section in self.whole or name in self.names.get(section, ())

    def any_of(self, section: str, names: Iterable[Any]) -> bool:
        return any(self.covers(section, n) for n in names)


@dataclass
class Partial:
    config: GatewayConfig  # the parts that validated
    broken: Broken
    kept: dict[str, list[int]]  # list section -> the file's index of each entry kept, in order

    def file_loc(self, loc: Loc) -> Loc:
        """A location in `config` as a location in the file (entries left out shift the indexes)."""
        if len(loc) >= 2 and loc[0] in self.kept and isinstance(loc[1], int):
            return (loc[0], self.kept[loc[0]][loc[1]], *loc[2:])
        return loc


def salvage(data: dict[str, Any], error: ValidationError) -> Partial | None:
    """The config without the parts `error` (the schema's verdict on `data`) found fault with; None when
    what is left still fails (a fault of the whole: nothing to leave out)."""
    bad = {_part(tuple(e["loc"])) for e in error.errors(include_url=False)}
    data = explicit_models(data)  # leaving out every route must not bring the default models back
    pruned, kept = _without(data, bad)
    try:  # each part is validated on its own, so what is left passes (the parts hold no checks across them)
        config = GatewayConfig.model_validate(pruned)
    except ValidationError:
        return None
    return Partial(config, _broken(data, bad), kept)


def _part(loc: Loc) -> Loc:
    if len(loc) >= 2 and loc[0] in _SECTIONS:
        return loc[:2]
    return loc[:1]


def _without(data: dict[str, Any], bad: set[Loc]) -> tuple[dict[str, Any], dict[str, list[int]]]:
    out = {k: v for k, v in data.items() if (k,) not in bad}
    kept: dict[str, list[int]] = {}
    for section in _LISTS:
        items = data.get(section)
        if (section,) in bad:
            out[section] = []  # not the defaults: they were not what the file meant
        elif isinstance(items, list):
            kept[section] = [i for i in range(len(items)) if (section, i) not in bad]
            out[section] = [items[i] for i in kept[section]]
    for section in _MAPS:  # one left out whole is gone from `out`: its default is empty
        items = data.get(section)
        if isinstance(items, dict) and (section,) not in bad:
            out[section] = {k: v for k, v in items.items() if (section, k) not in bad}
    return out, kept


def _broken(data: dict[str, Any], bad: set[Loc]) -> Broken:
    broken = Broken()
    for loc in bad:
        section = loc[0] if loc else None
        if section not in _SECTIONS:
            continue
        if len(loc) == 1:
            broken.whole.add(section)
            continue
        if section in _MAPS:
            name = loc[1]
        else:
            entry = data[section][loc[1]] if isinstance(loc[1], int) else None
            name = entry.get(_LISTS[section]) if isinstance(entry, dict) else None
        if isinstance(name, str):
            broken.names.setdefault(section, set()).add(name)
    return broken
