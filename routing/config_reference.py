"""The config schema as tables of a reference: one per object, a row per field (its dotted path, a readable
type, its default as YAML shows it, its description).

One walker serves the generated deploy/SETTINGS.md (gateway/settings_reference.py) and the check that every
field is described (`undescribed`), so a field the reference would show without words cannot slip in.
Paths: `server.grpc.port`; an item of a list `routes[].timeouts.read_s`; a value of a map
`providers.<name>.kind`. A discriminated union gets a table per variant, at the same path.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Iterator, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

LONG_DEFAULT = 80  # characters: a longer default is shortened in its cell and given in full below the table


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    description: str
    full_default: str | None = None  # the whole default, when `default` had to be shortened


@dataclass(frozen=True)
class Table:
    path: str  # "" for the root object
    model: type[BaseModel]
    doc: str
    rows: tuple[Row, ...]
    variant: str | None = None  # `kind: "a"` for one variant of a discriminated union


def tables(model: type[BaseModel], path: str = "", variant: str | None = None) -> list[Table]:
    """The tables of `model` and of every object reachable from it, depth first in field order."""
    return list(_walk(model, path, variant, ()))


def undescribed(model: type[BaseModel]) -> list[str]:
    """Every dotted path whose field has no description, and every object whose class has no docstring."""
    found: list[str] = []
    for table in tables(model):
        if not table.doc:
            found.append(f"{table.path or '(root)'} (class {table.model.__name__} has no docstring)")
        found += [row.path for row in table.rows if not row.description]
    return found


def _walk(model: type[BaseModel], path: str, variant: str | None,
          seen: tuple[type[BaseModel], ...]) -> Iterator[Table]:
    if model in seen:  # a recursive model: its table is already on the way
        return
    props = _schema(model).get("properties", {})
    rows = tuple(_row(_join(path, name), field, props.get(name, {})) for name, field in model.model_fields.items())
    yield Table(path, model, _doc(model), rows, variant)
    for name, field in model.model_fields.items():
        for suffix, child, label in _children(field.annotation, field.discriminator):
            yield from _walk(child, _join(path, name) + suffix, label, (*seen, model))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")  # the class's own: a docstring is not inherited here
    return " ".join(inspect.cleandoc(doc).split()) if doc else ""


@cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


Child = tuple[str, type[BaseModel], str | None]  # (path suffix, model, variant label)


def _children(annotation: Any, discriminator: Any, suffix: str = "") -> Iterator[Child]:
    """(path suffix, model, variant label) for each object type inside a field's annotation."""
    origin = get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield suffix, annotation, None
    elif origin is Annotated:
        inner, *meta = get_args(annotation)
        tag = next((m.discriminator for m in meta if isinstance(m, FieldInfo) and m.discriminator), discriminator)
        yield from _children(inner, tag, suffix)
    elif origin in (Union, types.UnionType):
        variants = [a for a in get_args(annotation) if a is not type(None)]
        for arg in variants:
            for sub, child, _ in _children(arg, None, suffix):
                yield sub, child, _variant(child, discriminator) if len(variants) > 1 else None
    elif origin in (list, tuple, set, frozenset):
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                yield from _children(arg, discriminator, suffix + "[]")
    elif origin is dict:
        yield from _children(get_args(annotation)[1], discriminator, suffix + ".<name>")


def _variant(model: type[BaseModel], discriminator: Any) -> str | None:
    if not isinstance(discriminator, str) or discriminator not in model.model_fields:
        return None
    values = get_args(model.model_fields[discriminator].annotation)
    return f"{discriminator}: " + " | ".join(json.dumps(v) for v in values)


def _row(path: str, field: FieldInfo, schema: dict[str, Any]) -> Row:
    description = " ".join((field.description or "").split())
    if field.is_required():
        return Row(path, type_text(schema), "required", description)
    default = yaml_value(field.annotation, field.get_default(call_default_factory=True))
    if len(default) <= LONG_DEFAULT:
        return Row(path, type_text(schema), default, description)
    return Row(path, type_text(schema), _shorten(default), description, full_default=default)


def _shorten(text: str) -> str:
    cut = text[:LONG_DEFAULT].rsplit(", ", 1)[0]
    return f"{cut}, …{text[-1]}" if text[-1] in "]}" else cut + " …"


def yaml_value(annotation: Any, value: Any) -> str:
    """`value` as it would stand in the YAML file, on one line (an object at its defaults: `{}`)."""
    plain = TypeAdapter(annotation).dump_python(value, mode="json", exclude_defaults=True)
    text = yaml.safe_dump([plain], default_flow_style=True, width=1 << 20, sort_keys=False, allow_unicode=True)
    return text.strip()[1:-1]  # dumped as a one-item list: no document end marker after a lone scalar


_BASE = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null"}


def type_text(schema: dict[str, Any]) -> str:
    """A field's JSON schema, readably: `int ≥ 1`, `float in (0, 1]`, `"text" | "json"`, `list[str]`,
    `dict[str, str]`, `object`, `str | null`."""
    if "$ref" in schema:
        return "object"
    for key in ("anyOf", "oneOf"):
        if key in schema:
            parts = list(dict.fromkeys(type_text(s) for s in schema[key]))
            return " | ".join(sorted(parts, key=lambda p: p == "null"))
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return " | ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        text = f"list[{type_text(schema['items']) if schema.get('items') else 'any'}]"
        return text + (f", at least {schema['minItems']}" if schema.get("minItems") else "")
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            return f"dict[str, {type_text(extra)}]"
        return "dict[str, any]" if extra is True or extra == {} else "object"
    if kind in _BASE:
        text = _BASE[kind] + _bounds(schema)
        return text + (f" matching {schema['pattern']}" if "pattern" in schema else "")
    return "any"


def _bounds(schema: dict[str, Any]) -> str:
    low = ("[", schema["minimum"]) if "minimum" in schema else ("(", schema.get("exclusiveMinimum"))
    high = ("]", schema["maximum"]) if "maximum" in schema else (")", schema.get("exclusiveMaximum"))
    if low[1] is not None and high[1] is not None:
        return f" in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    if low[1] is not None:
        return f" {'≥' if low[0] == '[' else '>'} {_num(low[1])}"
    if high[1] is not None:
        return f" {'≤' if high[0] == ']' else '<'} {_num(high[1])}"
    return ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
