"""deploy/SETTINGS.md: generated from the config schema's descriptions and gateway/env_vars.py, committed
current, with every field described and every environment variable the code reads in its table (and no row
that nothing reads)."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, Field, create_model

from gateway.env_vars import ENV_VARS
from gateway.settings_reference import COMMAND, TARGET, main, render
from routing.config import GatewayConfig, ServerConfig
from routing.config_reference import tables, undescribed
from tests.paths import ROOT

pytestmark = pytest.mark.unit

# -- the generated file ------------------------------------------------------------------------------------


def test_the_committed_reference_is_what_the_generator_writes() -> None:
    assert TARGET.read_text(encoding="utf-8") == render(), f"deploy/SETTINGS.md is stale: run `{COMMAND}`"


def test_check_fails_with_a_one_line_hint_when_the_file_is_stale(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "SETTINGS.md"
    assert main(["--check", "--output", str(out)]) == 1, "a missing file is stale"
    assert main(["--output", str(out)]) == 0 and main(["--check", "--output", str(out)]) == 0
    capsys.readouterr()
    out.write_text(out.read_text(encoding="utf-8").replace("`server.port`", "`server.prot`", 1), encoding="utf-8")
    assert main(["--check", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and COMMAND in err and str(out) in err
    assert "server.prot" in out.read_text(encoding="utf-8"), "--check writes nothing"


def test_the_reference_shows_readable_types_and_yaml_defaults() -> None:
    rows = {r.path: r for t in tables(GatewayConfig) for r in t.rows}
    expected = {
        "server.port": ("int in [0, 65535]", "8000"),
        "server.max_body_bytes": ("int > 0", "4194304"),
        "server.liveness_failed_after_s": ("float ≥ 0 | null", "60.0"),
        "server.grpc": ("object", "{}"),
        "server.cors": ("object | null", "null"),
        "logging.format": ('"text" | "json"', "text"),
        "routes[].deployments": ("list[str], at least 1", "required"),
        "routes[].rules[].when.header": ("dict[str, str] | null", "null"),
        "deployments[].batch_share": ("float in (0, 1]", "0.5"),
        "breaker.probe_jitter": ("float in [0, 1)", "0.2"),
        "providers": ("dict[str, object]", "{}"),
        "providers.<name>.base_url": ("str matching ^https?://", "required"),
        "redis.prefix": ("str", "'gw:'"),
        "models": ("list[object]", "[{card: gemma-3-270m}, {card: all-minilm-l6-v2, required: false}]"),
        "models[].backend": ('"llamacpp"', "llamacpp"),
        "cost.self_hosting[].instance_price_per_hour": ("float ≥ 0", "required"),
    }
    assert {p: (rows[p].type, rows[p].default) for p in expected} == expected
    headers = rows["server.cors.allow_headers"]
    assert headers.default.endswith(", …]") and headers.full_default and "x-gateway-priority" in headers.full_default
    text = render()
    assert "| `server.port` | `int in [0, 65535]` | `8000` |" in text
    assert r"`str matching ^(v1\|\d{4}" in text, "a | inside a cell is escaped"
    assert "\n## `routes[]`\n" in text and "\n### `routes[].rules[].when`\n" in text


# -- every field described ------------------------------------------------------------------------------------


def test_every_setting_and_object_has_a_description() -> None:
    assert undescribed(GatewayConfig) == []


class Leaf(BaseModel):
    """A described object."""

    ok: int = Field(default=1, description="described")
    bare: int = 2


class NoDoc(BaseModel):
    x: int = Field(default=0, description="described")


class Tree(BaseModel):
    """The root."""

    items: list[Leaf] = Field(default_factory=list, description="described")
    by_name: dict[str, NoDoc] = Field(default_factory=dict, description="described")
    blank: str = Field(default="a", description="  ")


def test_a_field_without_a_description_is_named_by_its_dotted_path() -> None:
    assert undescribed(Tree) == ["blank", "items[].bare", "by_name.<name> (class NoDoc has no docstring)"]


def test_a_new_undescribed_field_anywhere_in_the_config_fails_the_check() -> None:
    """The mutation, done here so the check cannot pass by walking too little: a field added to `server`
    without a description is named, at its path, when the real GatewayConfig is walked."""
    mutant_server = create_model("MutantServer", __base__=ServerConfig, __doc__="A server with a new field.",
                                 new_knob=(int, 3))
    mutant = create_model("MutantGateway", __base__=GatewayConfig, __doc__="The config, mutated.",
                          server=(mutant_server, Field(default_factory=mutant_server, description="described")))
    assert undescribed(mutant) == ["server.new_knob"]


class Cat(BaseModel):
    """A cat."""

    kind: Literal["cat"] = Field(description="the tag")
    lives: int = Field(default=9, ge=1, description="lives left")


class Dog(BaseModel):
    """A dog."""

    kind: Literal["dog"] = Field(description="the tag")
    tricks: list[str] = Field(default_factory=list)


class Pets(BaseModel):
    """Pets."""

    first: Cat | Dog = Field(discriminator="kind", description="one pet")
    others: list[Annotated[Union[Cat, Dog], Field(discriminator="kind")]] = Field(default_factory=list,
                                                                                 description="more")


def test_a_discriminated_union_gets_a_table_per_variant() -> None:
    found = [(t.path, t.variant, [r.path for r in t.rows]) for t in tables(Pets)]
    assert found == [
        ("", None, ["first", "others"]),
        ("first", 'kind: "cat"', ["first.kind", "first.lives"]),
        ("first", 'kind: "dog"', ["first.kind", "first.tricks"]),
        ("others[]", 'kind: "cat"', ["others[].kind", "others[].lives"]),
        ("others[]", 'kind: "dog"', ["others[].kind", "others[].tricks"]),
    ]
    assert undescribed(Pets) == ["first.tricks", "others[].tricks"]
    root, cat, dog = tables(Pets)[:3]
    assert (root.rows[0].type, cat.rows[1].type, cat.rows[0].type, dog.rows[0].type) == \
        ("object", "int ≥ 1", '"cat"', '"dog"')


# -- environment variables -------------------------------------------------------------------------------------

PACKAGES = ("gateway", "backends", "routing")
NAME = re.compile(r"[A-Z][A-Z0-9_]*")
SHELL_READ = re.compile(r"\$\{([A-Z][A-Z0-9_]*):?-")  # ${NAME:-default}: an outside variable under `set -u`
CONFIG_REF = re.compile(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)")  # a config's ${NAME} / ${NAME:-default}


def _python_reads(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """{variable: where it is read} for os.environ.get / os.getenv / os.environ[...] (and `env.get(...)` on a
    Mapping standing in for os.environ), with names given as literals or as module-level constants (imported
    under another name too)."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for pkg in packages
             for path in sorted((root / pkg).rglob("*.py"))}
    constants: dict[str, str] = {}
    for tree in trees.values():
        for node in tree.body:
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                constants.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                constants.update({a.asname: constants[a.name] for a in node.names if a.asname and a.name in constants})

    def named(arg: ast.expr) -> str | None:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
        if isinstance(arg, (ast.Name, ast.Attribute)):
            return constants.get(arg.id if isinstance(arg, ast.Name) else arg.attr)
        return None

    def environ(expr: ast.expr) -> bool:
        text = ast.unparse(expr)
        return text.endswith("environ") or text == "env"

    found: dict[str, str] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            key = None
            if isinstance(node, ast.Call) and node.args and isinstance(node.func, ast.Attribute):
                if (node.func.attr == "get" and environ(node.func.value)) or node.func.attr == "getenv":
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and environ(node.value):
                key = node.slice
            name = named(key) if key is not None else None
            if name and NAME.fullmatch(name):
                found.setdefault(name, f"{path.relative_to(root)}:{node.lineno}")
    return found


def _file_reads(root: Path) -> dict[str, str]:
    """{variable: file} for deploy/*.sh's `${NAME:-...}` and the shipped YAML's `${NAME}` references."""
    found: dict[str, str] = {}
    for path in sorted((root / "deploy").glob("*.sh")):
        found.update({n: str(path.relative_to(root)) for n in SHELL_READ.findall(path.read_text(encoding="utf-8"))})
    for path in sorted(p for p in (root / "deploy").rglob("*") if p.suffix in (".yaml", ".yml")):
        found.update({n: str(path.relative_to(root)) for n in CONFIG_REF.findall(path.read_text(encoding="utf-8"))})
    return found


def env_reads(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    return {**_file_reads(root), **_python_reads(root, packages)}


def table_problems(read: dict[str, str], rows: list[str]) -> list[str]:
    problems = [f"{name} (read at {where}) has no row in gateway/env_vars.py" for name, where in sorted(read.items())
                if name not in rows]
    problems += [f"{name} has a row but nothing reads it" for name in sorted(set(rows) - set(read))]
    problems += [f"{name} has two rows" for name in sorted({n for n in rows if rows.count(n) > 1})]
    return problems


def test_every_variable_read_has_a_row_and_every_row_is_read() -> None:
    read = env_reads(ROOT)
    assert {"LLM_GATEWAY_LOG_FORMAT", "LLM_GATEWAY_ENGINE_CONTROL", "REDIS_URL", "LLAMA_CPP_BUILD",
            "VLLM_API_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= set(read), "the scan finds every kind of read"
    assert table_problems(read, [v.name for v in ENV_VARS]) == []


def test_the_table_in_settings_md_has_a_row_per_variable() -> None:
    text = render()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.M)
    assert listed == [v.name for v in ENV_VARS]
    assert all(v.sets and v.default and v.read_by for v in ENV_VARS)


SOURCE = '''
import os
from os import environ
from gateway.settings import ENV_CONFIG as RENAMED
MY_ENV = "LLM_GATEWAY_FROM_CONSTANT"

def f(env):
    os.environ.get("LLM_GATEWAY_LITERAL")
    os.getenv("LLM_GATEWAY_GETENV", "x")
    environ["LLM_GATEWAY_SUBSCRIPT"]
    env.get(MY_ENV)
    os.environ.get(RENAMED)
    os.environ["LLM_GATEWAY_ONLY_WRITTEN"] = "1"
    {"a": 1}.get("NOT_AN_ENV_READ")
'''


def test_the_scan_finds_a_new_read_and_the_table_check_fails_both_ways(tmp_path: Path) -> None:
    """The mutations, done here: a new variable read in the code without a row, and a row nothing reads."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "settings.py").write_text('ENV_CONFIG = "LLM_GATEWAY_CONFIG"\n', encoding="utf-8")
    (tmp_path / "gateway" / "new.py").write_text(SOURCE, encoding="utf-8")
    (tmp_path / "deploy" / "configs").mkdir(parents=True)
    (tmp_path / "deploy" / "build.sh").write_text('X=${LLAMA_NEW_FLAG:-off}\nY="$LOCAL_ONLY"\n', encoding="utf-8")
    (tmp_path / "deploy" / "configs" / "a.yaml").write_text("api_key: ${NEW_API_KEY}\nx: $${LITERAL}\n",
                                                            encoding="utf-8")
    read = env_reads(tmp_path, ("gateway",))
    assert set(read) == {"LLM_GATEWAY_LITERAL", "LLM_GATEWAY_GETENV", "LLM_GATEWAY_SUBSCRIPT",
                         "LLM_GATEWAY_FROM_CONSTANT", "LLM_GATEWAY_CONFIG", "LLAMA_NEW_FLAG", "NEW_API_KEY"}
    assert read["LLM_GATEWAY_LITERAL"] == "gateway/new.py:8"
    rows = sorted(set(read) - {"LLM_GATEWAY_FROM_CONSTANT"}) + ["LLM_GATEWAY_STALE"]
    assert table_problems(read, rows) == [
        "LLM_GATEWAY_FROM_CONSTANT (read at gateway/new.py:11) has no row in gateway/env_vars.py",
        "LLM_GATEWAY_STALE has a row but nothing reads it"]
