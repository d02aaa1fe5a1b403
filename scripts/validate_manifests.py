"""Validate rendered Kubernetes manifests offline: API schemas, and the rules that tie the objects together.

    python scripts/validate_manifests.py [--schemas] [--policies] RENDERED.yaml ...

--schemas   every object against the Kubernetes OpenAPI schemas shipped by the `kubernetes-validate` package
            (strict: unknown fields fail), for each version in $K8S_VERSIONS (default: 1.29.0 and the newest
            the package ships); Prometheus Operator and KEDA kinds against the subset schemas in k8s/schemas/.
            Needs kubernetes-validate (scripts/install-ci-tools.sh puts it in .cache/ci-tools).
--policies  cross-object checks no schema or scanner sees: selectors match, named ports and referenced
            ConfigMaps / PVCs exist, startup and readiness probes hit /health and liveness /live, the grace
            period covers preStop + drain, pods meet the "restricted" Pod Security Standard their namespace
            enforces, ConfigMap keys are real
            BERTSERVE_* settings (read from bertserve/config.py), a pod given a GPU is told to use it, one
            autoscaler per Deployment, KEDA queries name metrics the service exports (read from
            bertserve/metrics.py). Needs only PyYAML.
Neither flag: both. Exit status 1 on any problem; every problem is printed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO / "k8s" / "schemas"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
}
GPU = "nvidia.com/gpu"
# Sample names a metric family exposes besides its own: counters' _total, histograms' series.
METRIC_SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}
MIN_STARTUP_BUDGET_S = 120  # loading + warming the models: seconds for MiniLM, much more for big models
# Readiness (and start-up) wait for every served model; liveness only for the HTTP process, so a worker being
# replaced takes the pod out of the Service without restarting it.
PROBE_PATHS = {"startupProbe": "/health", "readinessProbe": "/health", "livenessProbe": "/live"}
SHUTDOWN_MARGIN_S = 5


def load(paths: Iterable[str | Path]) -> dict[str, list[dict]]:
    """Objects of each rendered file, by file name."""
    return {str(path): [doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc] for path in paths}


def describe(obj: dict) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


# --------------------------------------------------------------------------------------------------------
# schemas


def k8s_versions() -> list[str]:
    from kubernetes_validate import utils

    configured = os.environ.get("K8S_VERSIONS")
    if configured:
        return [v.strip() for v in configured.split(",") if v.strip()]
    return sorted({"1.29.0", utils.latest_version()}, key=lambda v: tuple(map(int, v.split("."))))


def schema_errors(objects: list[dict]) -> Iterator[str]:
    import jsonschema
    import kubernetes_validate

    versions = k8s_versions()
    for obj in objects:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key in CRD_SCHEMAS:
            schema = json.loads((SCHEMA_DIR / CRD_SCHEMAS[key]).read_text())
            validator = jsonschema.Draft7Validator(schema)
            for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
                where = "/".join(map(str, error.absolute_path)) or "(root)"
                yield f"{describe(obj)}: {where}: {error.message} [schema {CRD_SCHEMAS[key]}]"
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                yield f"{describe(obj)}: no schema for {key[0]} {key[1]} in Kubernetes {version}"
            except kubernetes_validate.ValidationError as error:
                where = "/".join(map(str, error.path)) or "(root)"
                yield f"{describe(obj)}: {where}: {error.message} [Kubernetes {version} schema]"


# --------------------------------------------------------------------------------------------------------
# cross-object policies


def known_settings() -> set[str]:
    """BERTSERVE_<FIELD> for every field of bertserve.config.Settings, read from the source (no import)."""
    tree = ast.parse((REPO / "bertserve" / "config.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            return {
                f"BERTSERVE_{stmt.target.id.upper()}"
                for stmt in node.body
                if isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and stmt.target.id != "model_config"
            }
    raise RuntimeError("class Settings not found in bertserve/config.py")


def exported_metrics() -> set[str]:
    """Every sample name bertserve/metrics.py exposes: f"{PREFIX}_name" families with their suffixes."""
    source = (REPO / "bertserve" / "metrics.py").read_text()
    families = re.findall(r'f"\{PREFIX\}_(\w+)"', source)
    return {f"bertserve_{family}{suffix}" for family in families for suffix in METRIC_SUFFIXES}


def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    if obj.get("kind") in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def template_labels(obj: dict) -> dict:
    if obj.get("kind") == "Pod":
        return obj.get("metadata", {}).get("labels", {})
    return obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})


def selects(selector: dict | None, labels: dict) -> bool:
    match = (selector or {}).get("matchLabels", selector or {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def restricted_errors(where: str, spec: dict) -> Iterator[str]:
    """The Pod Security Standard "restricted" profile, as the API server's admission would apply it."""
    pod_sc = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            yield f"{where}: {field} is not allowed"
    for volume in spec.get("volumes", []):
        allowed = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim"}
        allowed |= {"projected", "secret", "name"}
        if set(volume) - allowed:
            yield f"{where}: volume {volume.get('name')} uses {sorted(set(volume) - allowed)}"
    for container in spec.get("initContainers", []) + spec.get("containers", []):
        name = f"{where} container {container.get('name')}"
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            yield f"{name}: privileged"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield f"{name}: allowPrivilegeEscalation must be false"
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            yield f"{name}: capabilities must drop ALL"
        if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            yield f"{name}: adds capabilities {sc['capabilities']['add']}"
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            yield f"{name}: runAsNonRoot must be true"
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            yield f"{name}: runAsUser 0"
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"{name}: seccompProfile must be RuntimeDefault or Localhost, not {seccomp}"
        if not sc.get("readOnlyRootFilesystem"):  # not part of "restricted", but this project's rule
            yield f"{name}: readOnlyRootFilesystem must be true (mount an emptyDir on /tmp)"


def port_names(spec: dict) -> dict[str, int]:
    return {
        port["name"]: port["containerPort"]
        for container in spec.get("containers", [])
        for port in container.get("ports", [])
        if "name" in port
    }


def seconds(value: object) -> float:
    return float(value) if value not in (None, "") else 0.0


def container_env(container: dict, configmaps: dict[str, dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        env.update(configmaps.get(ref, {}).get("data", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def policy_errors(rendered: dict[str, list[dict]]) -> Iterator[str]:
    everything = [obj for objects in rendered.values() for obj in objects]
    claims = {
        (o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in everything
        if o.get("kind") == "PersistentVolumeClaim"
    }
    settings = known_settings()
    for source, objects in rendered.items():
        yield from _policy_errors(source, objects, claims, settings)
        yield from autoscaler_errors(source, objects)


def _policy_errors(source: str, objects: list[dict], claims: set, settings: set[str]) -> Iterator[str]:
    by_kind: dict[str, list[dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind"), []).append(obj)
    configmaps = {o["metadata"]["name"]: o for o in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    workloads = [o for o in objects if o.get("kind") in WORKLOAD_KINDS]
    namespaces = {o["metadata"]["name"]: o for o in by_kind.get("Namespace", [])}

    for name, cm in configmaps.items():
        for key in cm.get("data", {}):
            if key.startswith("BERTSERVE_") and key not in settings:
                yield f"{source}: ConfigMap {name}: {key} is not a setting of bertserve/config.py (ignored!)"

    for ns_name, ns in namespaces.items():
        if ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            yield f"{source}: Namespace {ns_name} does not enforce the restricted Pod Security Standard"

    for obj in workloads:
        where = f"{source}: {describe(obj)}"
        spec = pod_spec(obj)
        meta_ns = obj["metadata"].get("namespace")
        if meta_ns is None:
            yield f"{where}: no namespace"
        yield from restricted_errors(where, spec)
        if spec.get("automountServiceAccountToken") is not False:
            yield f"{where}: automountServiceAccountToken must be false (the service never calls the API)"
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            image = container.get("image", "")
            if image.endswith(":latest") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
                yield f"{where}: container {container['name']} image {image!r} has no fixed tag or digest"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(kind, {}):
                        yield f"{where}: container {container['name']} has no {kind}.{resource}"
            for source_ref in container.get("envFrom", []):
                ref = source_ref.get("configMapRef", {}).get("name")
                if ref and ref not in configmaps:
                    yield f"{where}: envFrom ConfigMap {ref} is not in the rendered output"
        for volume in spec.get("volumes", []):
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and (meta_ns, claim) not in claims:
                yield f"{where}: PVC {meta_ns}/{claim} is not defined by any rendered manifest"
            ref = volume.get("configMap", {}).get("name")
            if ref and ref not in configmaps:
                yield f"{where}: ConfigMap volume {ref} is not in the rendered output"

    for deployment in deployments:
        where = f"{source}: {describe(deployment)}"
        labels = template_labels(deployment)
        spec = pod_spec(deployment)
        if not selects(deployment["spec"].get("selector"), labels):
            yield f"{where}: selector does not match the pod template labels"
        ports = port_names(spec)
        for container in spec.get("containers", []):
            for probe, path in PROBE_PATHS.items():
                http = container.get(probe, {}).get("httpGet")
                if not http:
                    yield f"{where}: container {container['name']} has no HTTP {probe}"
                    continue
                if http.get("path") != path:
                    yield f"{where}: {probe} checks {http.get('path')}, not {path}"
                if isinstance(http.get("port"), str) and http["port"] not in ports:
                    yield f"{where}: {probe} port {http['port']} is not a named container port"
            startup = container.get("startupProbe", {})
            budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            if startup and budget < MIN_STARTUP_BUDGET_S:
                yield f"{where}: startupProbe allows {budget} s to load models (< {MIN_STARTUP_BUDGET_S} s)"
            env = container_env(container, configmaps)
            if "BERTSERVE_DRAIN_SECONDS" in env or container.get("lifecycle"):
                drain = seconds(env.get("BERTSERVE_DRAIN_SECONDS", 25))
                command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
                sleep = seconds(command[1]) if command[:1] == ["sleep"] and len(command) > 1 else 0.0
                sleep += seconds(
                    container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds")
                )
                grace = seconds(spec.get("terminationGracePeriodSeconds", 30))
                if grace < sleep + drain + SHUTDOWN_MARGIN_S:
                    yield (
                        f"{where}: terminationGracePeriodSeconds {grace:g} < preStop {sleep:g} + "
                        f"BERTSERVE_DRAIN_SECONDS {drain:g} + {SHUTDOWN_MARGIN_S}: requests would be cut off"
                    )
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                yield f"{where}: no writable /tmp mount (metrics files and temp files go there)"
            gpu = GPU in container.get("resources", {}).get("limits", {})
            if gpu and not env.get("BERTSERVE_DEVICE", "").startswith("cuda"):
                yield f"{where}: container {container['name']} gets a GPU but not BERTSERVE_DEVICE=cuda"

    for service in by_kind.get("Service", []):
        where = f"{source}: {describe(service)}"
        targets = [d for d in deployments if selects(service["spec"].get("selector"), template_labels(d))]
        if not targets:
            yield f"{where}: selector matches no Deployment"
        for port in service["spec"].get("ports", []):
            target = port.get("targetPort")
            for deployment in targets:
                if isinstance(target, str) and target not in port_names(pod_spec(deployment)):
                    yield f"{where}: targetPort {target} is not a port of {describe(deployment)}"

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(selects(pdb["spec"].get("selector"), template_labels(d)) for d in deployments):
            yield f"{source}: {describe(pdb)}: selector matches no Deployment"

    services = by_kind.get("Service", [])
    for monitor in by_kind.get("ServiceMonitor", []):
        where = f"{source}: {describe(monitor)}"
        matched = [
            s for s in services if selects(monitor["spec"].get("selector"), s["metadata"].get("labels", {}))
        ]
        if not matched:
            yield f"{where}: selector matches no Service's labels"
        for endpoint in monitor["spec"].get("endpoints", []):
            names = {p.get("name") for s in matched for p in s["spec"].get("ports", [])}
            if endpoint.get("port") and endpoint["port"] not in names:
                yield f"{where}: endpoint port {endpoint['port']} is not a port name of the selected Service"
        for deployment in deployments:
            annotations = deployment["spec"]["template"].get("metadata", {}).get("annotations") or {}
            selected = any(selects(s["spec"].get("selector"), template_labels(deployment)) for s in matched)
            if selected and annotations.get("prometheus.io/scrape") == "true":
                yield (
                    f"{where}: {describe(deployment)} also has prometheus.io/scrape: a Prometheus honouring "
                    "both scrapes it twice (one mechanism, not two)"
                )

    for operator_object in by_kind.get("ServiceMonitor", []) + by_kind.get("PrometheusRule", []):
        if not (operator_object["metadata"].get("labels") or {}).get("release"):
            yield (
                f"{source}: {describe(operator_object)}: no `release` label, which kube-prometheus-stack's "
                "default selectors need"
            )


def autoscaler_errors(source: str, objects: list[dict]) -> Iterator[str]:
    """HPAs and KEDA ScaledObjects: each scales a rendered Deployment, within sane bounds, alone; a KEDA
    Prometheus trigger queries metrics the service really exports."""
    deployments = {o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment"}
    scaled: dict[str, list[str]] = {}
    exported = exported_metrics()
    for scaler in (o for o in objects if o.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")):
        where = f"{source}: {describe(scaler)}"
        spec = scaler["spec"]
        ref = spec["scaleTargetRef"]
        if ref.get("kind", "Deployment") != "Deployment" or ref["name"] not in deployments:
            yield f"{where}: scaleTargetRef {ref.get('kind', 'Deployment')}/{ref['name']} is not rendered"
        scaled.setdefault(ref["name"], []).append(describe(scaler))
        if scaler["kind"] == "HorizontalPodAutoscaler":
            low, high = spec.get("minReplicas", 1), spec["maxReplicas"]
        else:
            low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if low > high:
            yield f"{where}: minimum replicas {low} > maximum {high}"
        for trigger in spec.get("triggers", []):
            if trigger.get("type") != "prometheus":
                continue
            names = set(re.findall(r"\bbertserve_\w+", trigger["metadata"].get("query", "")))
            if not names:
                yield f"{where}: trigger {trigger.get('name')} queries no bertserve_* metric"
            for name in sorted(names - exported):
                yield f"{where}: trigger {trigger.get('name')} queries {name}, not a bertserve metric"
    for deployment, scalers in scaled.items():
        if len(scalers) > 1:
            yield f"{source}: Deployment {deployment} has {len(scalers)} autoscalers, which fight: {scalers}"


# --------------------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description="Validate rendered Kubernetes manifests offline: API schemas, and the rules that tie the "
        "objects together. Neither flag: both."
    )
    parser.add_argument("--schemas", action="store_true", help="check each object against its API schema")
    parser.add_argument("--policies", action="store_true", help="check the rules between the objects")
    parser.add_argument("rendered", nargs="+", help="kustomize output (YAML, several documents)")
    args = parser.parse_args(argv)
    run_schemas = args.schemas or not args.policies
    run_policies = args.policies or not args.schemas
    rendered = load(args.rendered)
    problems: list[str] = []
    count = sum(len(objects) for objects in rendered.values())
    if run_schemas:
        for source, objects in rendered.items():
            problems += [f"{source}: {error}" for error in schema_errors(objects)]
        versions = ", ".join(k8s_versions())
        crds = ", ".join(kind for _, kind in CRD_SCHEMAS)
        print(f"schemas: {count} objects in {len(rendered)} files against Kubernetes {versions} (+ {crds})")
    if run_policies:
        problems += list(policy_errors(rendered))
        print(f"policies: {count} objects in {len(rendered)} files")
    for problem in problems:
        print(f"  FAIL {problem}")
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
