"""Each resource of the builds as a template: which fields the chart's values replace, and when it renders.

A resource nothing here knows (one someone adds to the base) still goes into the chart as it is, with the
chart's labels, rendered with vLLM when it is vLLM's (app.kubernetes.io/name: vllm). What the defaults of
values.yaml are is read from the same resources (`Chart.values`), so the default render is the cpu build.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from chartgen import yamltpl
from chartgen.manifests import Builds
from chartgen.yamltpl import Template

SECRET_NAME = 'include "llm-gateway.secretName" . | quote'
VLLM_ON = ".Values.vllm.enabled"
# vLLM flags whose values come from values.yaml (vllm.<key>); the model is the first, positional, argument.
VLLM_FLAGS = {"--served-model-name": "servedModelName", "--max-model-len": "maxModelLen",
              "--gpu-memory-utilization": "gpuMemoryUtilization"}
# The key-check init container tells a Kustomize user where the keys go; a chart user sets them elsewhere.
KUSTOMIZE_SECRETS_FILE = "deploy/kubernetes/base/secrets.env"
CHART_SECRETS = "the keys' Secret (chart values: existingSecret, or secrets)"


class Unsupported(SystemExit):
    """The manifests changed in a way the generator does not know how to turn into values."""

    def __init__(self, what: str) -> None:
        super().__init__(f"deploy/helm/generate.py: {what}; teach deploy/helm/chartgen/resources.py about it")


def _replace_key(mapping: dict[str, Any], key: str, new_key: str, value: Any = None) -> None:
    """Swap `key` for `new_key` in place, keeping the order (a block token takes the key's line)."""
    items = [(new_key, value) if k == key else (k, v) for k, v in mapping.items()]
    mapping.clear()
    mapping.update(items)


def _name_label(doc: dict[str, Any]) -> str | None:
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc["spec"]["template"]["spec"]
    return list(pod.get("initContainers") or []) + list(pod["containers"])


def _container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    if len(found) != 1:
        raise Unsupported(f"{doc['kind']}/{doc['metadata']['name']} has no container {name!r}")
    return found[0]


def _split_image(image: str) -> tuple[str, str]:
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:
        raise Unsupported(f"image {image!r} has no tag")
    return repository, tag


class Chart:
    """Templates (path -> text) and the values' defaults, made from the builds."""

    def __init__(self, builds: Builds) -> None:
        self.builds = builds
        self.templates: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.secret_keys: list[str] = []
        self._gpu_env = self._gpu_only_gateway_env()
        self._cpu_names = {(d["kind"], d["metadata"]["name"]) for d in builds.cpu.docs}
        self.secret = self._secret_name()
        for doc in self._resources():
            self._add(copy.deepcopy(doc))

    # -- which resources, from which build -----------------------------------------------------

    def _secret_name(self) -> str:
        names = set(self.builds.cpu.secrets) | set(self.builds.full.secrets)
        if len(names) != 1:
            raise Unsupported(f"the builds generate Secrets {sorted(names)}; the chart knows one (the keys)")
        return names.pop()

    def _resources(self) -> list[dict[str, Any]]:
        """The cpu build's resources, then those only the gpu-and-components build has."""
        extra = [d for d in self.builds.full.docs if (d["kind"], d["metadata"]["name"]) not in self._cpu_names]
        for doc in self.builds.cpu.docs:
            other = self.builds.full.find(doc["kind"], doc["metadata"]["name"])
            mine = self._without_gpu_env(other) if other is not None else None
            if mine != doc:
                raise Unsupported(f"overlays/gpu or a component changes {doc['kind']}/{doc['metadata']['name']} "
                                  "beyond what the chart switches with vllm.enabled")
        return list(self.builds.cpu.docs) + extra

    def _gpu_only_gateway_env(self) -> list[dict[str, Any]]:
        cpu = self.builds.cpu.find("Deployment", "llm-gateway")
        full = self.builds.full.find("Deployment", "llm-gateway")
        if cpu is None or full is None:
            raise Unsupported("no Deployment llm-gateway in the builds")
        known = _container(cpu, "gateway").get("env") or []
        return [e for e in _container(full, "gateway").get("env") or [] if e not in known]

    def _without_gpu_env(self, doc: dict[str, Any]) -> dict[str, Any]:
        if doc["kind"] != "Deployment" or doc["metadata"]["name"] != "llm-gateway":
            return doc
        doc = copy.deepcopy(doc)
        gateway = _container(doc, "gateway")
        gateway["env"] = [e for e in gateway["env"] if e not in self._gpu_env]
        cpu_env = _container(self.builds.cpu.find("Deployment", "llm-gateway"), "gateway")["env"]
        gateway["env"].sort(key=lambda e: [x["name"] for x in cpu_env].index(e["name"]))
        return doc

    # -- one resource -------------------------------------------------------------------------

    def _add(self, doc: dict[str, Any]) -> None:
        t = Template()
        kind, name = doc["kind"], doc["metadata"]["name"]
        condition = VLLM_ON if _name_label(doc) == "vllm" else None
        transform: Callable[[Template, dict[str, Any]], str | None] | None = {
            ("Deployment", "llm-gateway"): self._gateway,
            ("Deployment", "vllm"): self._vllm,
            ("Service", "llm-gateway"): self._gateway_service,
            ("StatefulSet", "redis"): self._redis,
            ("PodDisruptionBudget", "llm-gateway"): self._pdb,
        }.get((kind, name)) or {
            "HorizontalPodAutoscaler": self._hpa,
            "PersistentVolumeClaim": self._vllm_cache if condition else None,
            "Ingress": self._ingress,
            "ServiceMonitor": self._service_monitor,
        }.get(kind)
        if transform is not None:
            condition = transform(t, doc) or condition
        self._secret_refs(t, doc)
        labels = doc["metadata"].setdefault("labels", {})
        labels[t.block(yamltpl.include("llm-gateway.labels"))] = None
        path = f"templates/{name}-{kind.lower()}.yaml"
        if path in self.templates:
            raise Unsupported(f"two resources would be {path}")
        self.templates[path] = t.render(doc, condition)

    def _secret_refs(self, t: Template, node: Any) -> None:
        """Every reference to the keys' Secret names the chart's (or the existing) Secret."""
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "name" and value == self.secret:
                    node[key] = t.value(SECRET_NAME)
                else:
                    self._secret_refs(t, value)
            for key in ("secretKeyRef", "secretRef"):
                if isinstance(node.get(key), dict) and "key" in node[key] and node[key]["key"] not in self.secret_keys:
                    self.secret_keys.append(node[key]["key"])
        elif isinstance(node, list):
            for item in node:
                self._secret_refs(t, item)

    # -- the gateway --------------------------------------------------------------------------

    def _gateway(self, t: Template, doc: dict[str, Any]) -> None:
        spec = doc["spec"]
        if "replicas" in spec:
            raise Unsupported("the gateway Deployment sets replicas (the HPA owns them)")
        replicas = yamltpl.lines("{{- if not .Values.autoscaling.enabled }}\n"
                                 "replicas: {{ .Values.replicaCount }}\n{{- end }}")
        doc["spec"] = spec = {t.block(replicas): None, **spec}
        self._pod_annotations(t, doc, ".Values.podAnnotations")
        gateway = _container(doc, "gateway")
        repository, tag = _split_image(gateway["image"])
        self.values["image"] = {"repository": repository, "tag": tag,
                                "pullPolicy": gateway.get("imagePullPolicy", "IfNotPresent")}
        image = gateway["image"]
        for c in _containers(doc):
            if c["image"] == image:
                c["image"] = t.value('printf "%s:%s" .Values.image.repository (toString .Values.image.tag) | quote')
                if "imagePullPolicy" in c:
                    c["imagePullPolicy"] = t.value(".Values.image.pullPolicy | quote")
            if c.get("command") and isinstance(c["command"][-1], str):
                c["command"][-1] = c["command"][-1].replace(KUSTOMIZE_SECRETS_FILE, CHART_SECRETS)
        self.values["resources"] = gateway["resources"]
        _replace_key(gateway, "resources", t.block(yamltpl.yaml_of("resources", ".Values.resources")))
        env = gateway.setdefault("env", [])
        if self._gpu_env:
            gpu_env = copy.deepcopy(self._gpu_env)
            self._secret_refs(t, gpu_env)  # a block's content is not walked with the rest of the tree
            env.append(t.block(yamltpl.when(VLLM_ON, gpu_env)))
        env.append(t.block(yamltpl.yaml_items(".Values.extraEnv")))
        pod = spec["template"]["spec"]
        for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity"):
            if key in pod:
                raise Unsupported(f"the gateway pod sets {key}")
            pod[t.block(yamltpl.optional_yaml(key, f".Values.{key}"))] = None

    def _pod_annotations(self, t: Template, doc: dict[str, Any], extra: str) -> None:
        """A chart-made Secret's checksum (a changed key rolls the pods, as kustomize's hashed name does)."""
        meta = doc["spec"]["template"]["metadata"]
        if "annotations" in meta:
            raise Unsupported(f"{doc['metadata']['name']}'s pod template has annotations")
        meta[t.block(lambda i: (
            f"{{{{- if or (not .Values.existingSecret) {extra} }}}}\nannotations:\n"
            "  {{- if not .Values.existingSecret }}\n"
            '  checksum/keys: {{ include "llm-gateway.keysChecksum" . }}\n  {{- end }}\n'
            f"  {{{{- with {extra} }}}}\n  {{{{- toYaml . | nindent {i + 2} }}}}\n  {{{{- end }}}}\n"
            "{{- end }}"))] = None

    def _gateway_service(self, t: Template, doc: dict[str, Any]) -> None:
        self.values["service"] = {"type": doc["spec"].get("type", "ClusterIP"), "annotations": {}}
        doc["spec"]["type"] = t.value(".Values.service.type | quote")
        if "annotations" in doc["metadata"]:
            raise Unsupported("the gateway Service has annotations")
        doc["metadata"][t.block(yamltpl.optional_yaml("annotations", ".Values.service.annotations"))] = None

    def _hpa(self, t: Template, doc: dict[str, Any]) -> str:
        spec = doc["spec"]
        cpu = [m for m in spec.get("metrics") or [] if m.get("resource", {}).get("name") == "cpu"]
        if len(cpu) != 1:
            raise Unsupported("the HPA scales on other than one CPU metric")
        target = cpu[0]["resource"]["target"]
        self.values["autoscaling"] = {"enabled": True, "minReplicas": spec["minReplicas"],
                                      "maxReplicas": spec["maxReplicas"],
                                      "targetCPUUtilizationPercentage": target["averageUtilization"]}
        spec["minReplicas"] = t.value(".Values.autoscaling.minReplicas")
        spec["maxReplicas"] = t.value(".Values.autoscaling.maxReplicas")
        target["averageUtilization"] = t.value(".Values.autoscaling.targetCPUUtilizationPercentage")
        return ".Values.autoscaling.enabled"

    def _pdb(self, t: Template, doc: dict[str, Any]) -> None:
        self.values["podDisruptionBudget"] = {"minAvailable": doc["spec"]["minAvailable"]}
        doc["spec"]["minAvailable"] = t.value(".Values.podDisruptionBudget.minAvailable")

    # -- Redis --------------------------------------------------------------------------------

    def _redis(self, t: Template, doc: dict[str, Any]) -> None:
        redis = _container(doc, "redis")
        claims = doc["spec"].get("volumeClaimTemplates") or []
        if len(claims) != 1:
            raise Unsupported("the Redis StatefulSet has other than one volume claim")
        claim = claims[0]["spec"]
        self.values["redis"] = {"image": redis["image"], "storage": {
            "size": claim["resources"]["requests"]["storage"], "storageClassName": ""}}
        redis["image"] = t.value(".Values.redis.image | quote")
        claim["resources"]["requests"]["storage"] = t.value(".Values.redis.storage.size | quote")
        claim[t.block(_storage_class(".Values.redis.storage.storageClassName"))] = None

    # -- vLLM ---------------------------------------------------------------------------------

    def _vllm(self, t: Template, doc: dict[str, Any]) -> None:
        vllm = _container(doc, "vllm")
        repository, tag = _split_image(vllm["image"])
        values: dict[str, Any] = {"enabled": False, "image": {"repository": repository, "tag": tag}}
        vllm["image"] = t.value('printf "%s:%s" .Values.vllm.image.repository (toString .Values.vllm.image.tag) '
                                "| quote")
        args = vllm["args"]
        values["model"] = args[0]
        args[0] = t.value(".Values.vllm.model | quote")
        for flag, key in VLLM_FLAGS.items():
            if flag not in args:
                raise Unsupported(f"the vLLM container has no {flag}")
            at = args.index(flag) + 1
            values[key] = args[at]
            args[at] = t.value(f".Values.vllm.{key} | quote")
        values["extraArgs"] = []
        args.append(t.block(yamltpl.yaml_items(".Values.vllm.extraArgs")))
        values["resources"] = vllm["resources"]
        _replace_key(vllm, "resources", t.block(yamltpl.yaml_of("resources", ".Values.vllm.resources")))
        pod = doc["spec"]["template"]["spec"]
        values["tolerations"] = pod.get("tolerations") or []
        values["nodeSelector"] = pod.get("nodeSelector") or {}
        for key in ("tolerations", "nodeSelector"):
            block = t.block(yamltpl.optional_yaml(key, f".Values.vllm.{key}"))
            if key in pod:
                _replace_key(pod, key, block)
            else:
                pod[block] = None
        self._pod_annotations(t, doc, ".Values.vllm.podAnnotations")
        values["podAnnotations"] = {}
        values["cache"] = self._vllm_cache_volume(t, pod)
        self.values["vllm"] = values

    def _vllm_cache_volume(self, t: Template, pod: dict[str, Any]) -> dict[str, Any]:
        """The volume on the gpu overlay's claim: which one is values-selectable (vllm.cache.kind)."""
        claims = {d["metadata"]["name"]: d for d in self.builds.full.docs if d["kind"] == "PersistentVolumeClaim"}
        volumes = [v for v in pod.get("volumes") or [] if v.get("persistentVolumeClaim", {}).get("claimName") in claims]
        if len(volumes) != 1:
            raise Unsupported("the vLLM pod has other than one volume on a claim of the gpu overlay")
        volume = volumes[0]
        claim_name = volume["persistentVolumeClaim"]["claimName"]
        claim = claims[claim_name]["spec"]
        _replace_key(volume, "persistentVolumeClaim", t.block(yamltpl.lines(
            '{{- if eq .Values.vllm.cache.kind "emptyDir" }}\nemptyDir:\n'
            "  sizeLimit: {{ .Values.vllm.cache.size | quote }}\n"
            '{{- else if eq .Values.vllm.cache.kind "existingClaim" }}\npersistentVolumeClaim:\n'
            '  claimName: {{ required "vllm.cache.existingClaim: the name of your claim" '
            ".Values.vllm.cache.existingClaim | quote }}\n"
            '{{- else if eq .Values.vllm.cache.kind "persistentVolumeClaim" }}\npersistentVolumeClaim:\n'
            f"  claimName: {claim_name}\n"
            '{{- else }}\n{{- fail "vllm.cache.kind: persistentVolumeClaim, existingClaim or emptyDir" }}\n'
            "{{- end }}")))
        return {"kind": "persistentVolumeClaim", "size": claim["resources"]["requests"]["storage"],
                "accessModes": claim["accessModes"], "storageClassName": "", "existingClaim": "", "keep": True}

    def _vllm_cache(self, t: Template, doc: dict[str, Any]) -> str:
        spec = doc["spec"]
        spec["resources"]["requests"]["storage"] = t.value(".Values.vllm.cache.size | quote")
        _replace_key(spec, "accessModes", t.block(yamltpl.yaml_of("accessModes", ".Values.vllm.cache.accessModes")))
        spec[t.block(_storage_class(".Values.vllm.cache.storageClassName"))] = None
        if "annotations" in doc["metadata"]:
            raise Unsupported("the vLLM cache claim has annotations")
        doc["metadata"][t.block(yamltpl.lines(  # `helm uninstall` leaves the downloaded weights
            "{{- if .Values.vllm.cache.keep }}\nannotations:\n  helm.sh/resource-policy: keep\n{{- end }}"))] = None
        return f'and {VLLM_ON} (eq .Values.vllm.cache.kind "persistentVolumeClaim")'

    # -- the components: Ingress, ServiceMonitor ----------------------------------------------

    def _ingress(self, t: Template, doc: dict[str, Any]) -> str:
        spec, meta = doc["spec"], doc["metadata"]
        backends = [p["backend"] for r in spec["rules"] for p in r["http"]["paths"]]
        if any(b != backends[0] for b in backends) or spec.get("tls") or spec.get("defaultBackend"):
            raise Unsupported("the Ingress has several backends, tls or a default backend")
        self.values["ingress"] = {
            "enabled": False, "className": spec.get("ingressClassName", ""),
            "annotations": meta.get("annotations") or {},
            "hosts": [{"host": r.get("host", ""), "paths": [{"path": p["path"], "pathType": p["pathType"]}
                                                          for p in r["http"]["paths"]]} for r in spec["rules"]],
            "tls": []}
        annotations = t.block(yamltpl.optional_yaml("annotations", ".Values.ingress.annotations"))
        if "annotations" in meta:
            _replace_key(meta, "annotations", annotations)
        else:
            meta[annotations] = None
        backend = yamltpl.dump({"backend": backends[0]}).rstrip()
        doc["spec"] = {
            t.block(yamltpl.lines("{{- with .Values.ingress.className }}\ningressClassName: {{ . | quote }}\n"
                                  "{{- end }}")): None,
            t.block(yamltpl.optional_yaml("tls", ".Values.ingress.tls")): None,
            "rules": [t.block(lambda i: (
                "{{- range .Values.ingress.hosts }}\n- http:\n    paths:\n      {{- range .paths }}\n"
                "      - path: {{ .path | quote }}\n        pathType: {{ .pathType | quote }}\n"
                + "".join(f"        {line}\n" for line in backend.splitlines())
                + "      {{- end }}\n  {{- with .host }}\n  host: {{ . | quote }}\n  {{- end }}\n{{- end }}"))],
        }
        return ".Values.ingress.enabled"

    def _service_monitor(self, t: Template, doc: dict[str, Any]) -> str:
        endpoints = doc["spec"]["endpoints"]
        if len(endpoints) != 1:
            raise Unsupported("the ServiceMonitor has other than one endpoint")
        endpoint = endpoints[0]
        self.values["serviceMonitor"] = {"enabled": False, "labels": {}, "interval": endpoint["interval"],
                                         "scrapeTimeout": endpoint["scrapeTimeout"]}
        endpoint["interval"] = t.value(".Values.serviceMonitor.interval | quote")
        endpoint["scrapeTimeout"] = t.value(".Values.serviceMonitor.scrapeTimeout | quote")
        doc["metadata"].setdefault("labels", {})[t.block(yamltpl.yaml_items(".Values.serviceMonitor.labels"))] = None
        return ".Values.serviceMonitor.enabled"


def _storage_class(expr: str) -> yamltpl.Block:
    return yamltpl.lines(f"{{{{- with {expr} }}}}\nstorageClassName: {{{{ . | quote }}}}\n{{{{- end }}}}")
