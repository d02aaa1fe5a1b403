"""k8s/: every kustomization renders, validates against the Kubernetes OpenAPI schemas offline, passes the
cross-object policies of scripts/validate_manifests.py and the checkov policy scanner (skips justified in
place). Each check is also shown to fail on a broken manifest, so a green run means something."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import REPO, binary, ci_python_with, ci_tool

TARGETS = {
    "dev": "k8s/overlays/dev",
    "prod": "k8s/overlays/prod",
    "gpu": "k8s/overlays/gpu",
    "store-admin": "k8s/store-admin",
}
SERVER_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
}


def load_validator():
    spec = importlib.util.spec_from_file_location(
        "validate_manifests", REPO / "scripts" / "validate_manifests.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


validator = load_validator()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    """`kubectl kustomize` output of every target, as files (what `kubectl apply -k` would send)."""
    kubectl = binary("kubectl")
    folder = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, target in TARGETS.items():
        result = subprocess.run(
            [kubectl, "kustomize", str(REPO / target)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
        files[name] = folder / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


def objects(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
    return matches[0]


def write(tmp_path: Path, docs: list[dict], name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ render


def test_every_target_renders_the_expected_objects(rendered):
    kinds = {name: {d["kind"] for d in objects(path)} for name, path in rendered.items()}
    assert kinds["dev"] == SERVER_KINDS
    assert kinds["prod"] == SERVER_KINDS | {"PersistentVolumeClaim", "ServiceMonitor", "PrometheusRule"}
    # gpu: prod with KEDA's ScaledObject in place of the CPU HPA
    assert kinds["gpu"] == kinds["prod"] - {"HorizontalPodAutoscaler"} | {"ScaledObject"}
    assert kinds["store-admin"] == {"Pod", "NetworkPolicy"}
    for name, path in rendered.items():
        namespaces = {d["metadata"].get("namespace") for d in objects(path) if d["kind"] != "Namespace"}
        assert namespaces == {"bertserve-dev" if name == "dev" else "bertserve"}, (name, namespaces)


def test_overlays_differ_where_they_should(rendered):
    dev, prod = objects(rendered["dev"]), objects(rendered["prod"])
    dev_pod = find(dev, "Deployment")["spec"]["template"]["spec"]
    prod_pod = find(prod, "Deployment")["spec"]["template"]["spec"]
    # dev: the store baked into the image, one replica
    assert find(dev, "Deployment")["spec"]["replicas"] == 1
    assert find(dev, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 1
    assert not any("persistentVolumeClaim" in v for v in dev_pod["volumes"])
    assert dev_pod["containers"][0]["image"].endswith("-models")
    # prod: the store on a read-only PVC, verified by an init step before serving
    assert find(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    volume = next(v for v in prod_pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": "bertserve-models", "readOnly": True}
    for container in prod_pod["initContainers"] + prod_pod["containers"]:
        mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": "/models", "readOnly": True}
    assert prod_pod["initContainers"][0]["command"][:3] == ["bertserve", "store", "verify"]
    # the admin pod mounts the same claim read-write, where the serving pods cannot write
    admin = find(objects(rendered["store-admin"]), "Pod")["spec"]
    assert admin["volumes"][0]["persistentVolumeClaim"]["claimName"] == "bertserve-models"


def test_graceful_shutdown_and_settings_match_the_server(rendered):
    docs = objects(rendered["prod"])
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    config = find(docs, "ConfigMap")["data"]
    container = pod["containers"][0]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 5 + float(config["BERTSERVE_DRAIN_SECONDS"])
    assert container["envFrom"][0]["configMapRef"]["name"] == find(docs, "ConfigMap")["metadata"]["name"]
    assert pod["enableServiceLinks"] is False  # else BERTSERVE_PORT=tcp://... from the Service breaks startup


def test_one_scrape_mechanism_per_overlay_and_operator_objects_kube_prometheus_stack_selects(rendered):
    """dev: the prometheus.io/* pod annotations; prod and gpu: a ServiceMonitor instead, never both, and it
    and the PrometheusRule labelled with kube-prometheus-stack's release."""
    for name in ("dev", "prod", "gpu"):
        docs = objects(rendered[name])
        deployment = find(docs, "Deployment")
        annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
        if name == "dev":
            assert monitors == []
            assert annotations["prometheus.io/scrape"] == "true"
            port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
            assert annotations["prometheus.io/port"] == str(port) == "8000"
            assert annotations["prometheus.io/path"] == "/metrics"
        else:
            assert len(monitors) == 1
            assert not [key for key in annotations if key.startswith("prometheus.io/")], (name, annotations)
            for kind in ("ServiceMonitor", "PrometheusRule"):
                labels = find(docs, kind)["metadata"]["labels"]
                assert labels["release"] == "kube-prometheus-stack", (name, kind, labels)


def test_gpu_overlay_is_prod_on_gpu_nodes_scaled_on_requests_in_flight(rendered):
    prod, gpu = objects(rendered["prod"]), objects(rendered["gpu"])
    prod_pod = find(prod, "Deployment")["spec"]["template"]["spec"]
    pod = find(gpu, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert find(gpu, "ConfigMap")["data"]["BERTSERVE_DEVICE"] == "cuda"
    for c in pod["initContainers"] + pod["containers"]:
        assert c["image"] == "registry.example.com/bertserve:0.1.0-cuda"  # the TORCH_BUILD=cuda image
    # CUDA start-up gets twice prod's startup budget; everything else about the pod is prod's
    startup = container["startupProbe"]
    prod_startup = prod_pod["containers"][0]["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 2 * prod_startup["periodSeconds"] * prod_startup["failureThreshold"]
    assert pod["volumes"] == prod_pod["volumes"] and pod["securityContext"] == prod_pod["securityContext"]
    # KEDA scales the Deployment on the service's own in-flight gauge, through an HPA named like prod's
    scaled = find(gpu, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bertserve"}
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["name"] == "bertserve"
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert 'bertserve_requests_in_flight{namespace="bertserve"' in trigger["metadata"]["query"]
    assert scaled["fallback"]["replicas"] >= scaled["minReplicaCount"]


# ---------------------------------------------------------------------------- what the rendered pods do


def effective_settings(docs: list[dict], monkeypatch, gpus: int):
    """The settings `bertserve serve` resolves in the rendered pod: its ConfigMap as the environment, its CPU
    limit as the CPUs it may use, and `gpus` GPUs seen."""
    from bertserve.config import Settings

    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for name, value in find(docs, "ConfigMap")["data"].items():
        monkeypatch.setenv(name, value)
    cpus = int(container["resources"]["limits"]["cpu"])
    return Settings().resolved(cpus=cpus, probe=lambda: (gpus, "none"))


@pytest.mark.parametrize(("target", "gpus", "batch"), [("prod", 0, "CPU_BATCH"), ("gpu", 1, "CUDA_BATCH")])
def test_pods_batch_as_their_device_is_sized(rendered, monkeypatch, target, gpus, batch):
    """The gpu overlay's pods batch 128 sequences / 65536 tokens (what the GPU figures were measured at), not
    a CPU's 32 inherited from the base."""
    from bertserve.runtime import device

    settings = effective_settings(objects(rendered[target]), monkeypatch, gpus)
    assert (settings.max_batch_size, settings.max_batch_tokens) == getattr(device, batch)
    assert settings.device == ("cuda:0" if gpus else "cpu")


def endpoint_selectors(promql: str) -> list[list[tuple[str, str]]]:
    """The `endpoint` matchers of each vector selector `{...}` of a PromQL expression."""
    return [
        re.findall(r'\bendpoint\s*(=~|!~|!=|=)\s*"([^"]*)"', selector)
        for selector in re.findall(r"\{([^{}]*)\}", promql)
    ]


def counts(promql: str, endpoint: str) -> bool:
    """Whether some vector selector of the expression lets series of `endpoint` through."""
    tests = {
        "=": lambda value: endpoint == value,
        "!=": lambda value: endpoint != value,
        "=~": lambda value: re.fullmatch(value, endpoint) is not None,
        "!~": lambda value: re.fullmatch(value, endpoint) is None,
    }
    selectors = endpoint_selectors(promql) or [[]]  # no selector at all: nothing filters the endpoint
    return any(all(tests[op](value) for op, value in matchers) for matchers in selectors)


def test_the_endpoint_check_reads_promql():
    assert counts('sum(x{namespace="a",endpoint=~"classify|fill-mask"})', "classify")
    assert not counts('sum(x{namespace="a",endpoint=~"classify|fill-mask"})', "embeddings")
    assert counts('x{endpoint!~"explain|models"} > 1 or x{endpoint="explain"} > 8', "explain")
    assert not counts('x{endpoint!~"explain|models"} > 1 or x{endpoint="explain"} > 8', "models")
    assert counts("sum by (endpoint) (rate(x[5m]))", "embed")


def inference_endpoints() -> list[str]:
    """Every endpoint label the server puts on requests that reach an inference process (the route
    table's routes that have a queue)."""
    from bertserve import routes

    endpoints = [route.label for route in routes.ROUTES if route.queue is not None and route.label]
    assert {"classify", "fill-mask", "embeddings", "embed", "explain"} <= set(endpoints)
    return endpoints


def test_every_inference_endpoint_scales_the_gpu_pods_and_can_alert(rendered):
    """Embeddings and explain traffic counts for KEDA and for every alert, like classify and fill-mask."""
    gpu = objects(rendered["gpu"])
    queries = {"KEDA trigger": find(gpu, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]}
    for target in ("prod", "gpu"):
        rule = find(objects(rendered[target]), "PrometheusRule")
        for group in rule["spec"]["groups"]:
            queries |= {f"{target} {r['alert']}": r["expr"] for r in group["rules"] if "alert" in r}
    assert len(queries) > 4
    for endpoint in inference_endpoints():
        left_out = [name for name, query in queries.items() if not counts(query, endpoint)]
        assert not left_out, f"endpoint {endpoint} is left out of {left_out}"


@pytest.mark.parametrize("target", ["dev", "prod", "gpu"])
def test_liveness_asks_the_http_process_and_readiness_every_model(rendered, target):
    """/health is 503 while a worker is replaced: as liveness it would restart a pod that still serves."""
    container = find(objects(rendered[target]), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    paths = {probe: container[probe]["httpGet"]["path"] for probe in validator.PROBE_PATHS}
    assert paths == {"startupProbe": "/health", "readinessProbe": "/health", "livenessProbe": "/live"}


# ------------------------------------------------------------------------------------------------ schemas


def run_schema_validation(*paths: Path) -> subprocess.CompletedProcess:
    python = ci_python_with("kubernetes_validate")
    command = [python, str(REPO / "scripts" / "validate_manifests.py"), "--schemas", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_every_object_validates_against_the_kubernetes_schemas(rendered):
    result = run_schema_validation(*rendered.values())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s)" in result.stdout


def test_schema_validation_rejects_broken_objects(rendered, tmp_path):
    docs = objects(rendered["prod"])
    # (the Kubernetes schemas report the first problem of each object: one per object here)
    find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"exec": {}}
    find(docs, "HorizontalPodAutoscaler")["spec"]["maxReplicas"] = "ten"
    monitor = find(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    monitor["spec"]["endpoints"][0]["portName"] = "http"
    result = run_schema_validation(write(tmp_path, docs))
    assert result.returncode == 1
    for expected in ("'readinessprobe' was unexpected", "'ten' is not of type 'integer'", "15 seconds"):
        assert expected in result.stdout, result.stdout
    assert "'portName' was unexpected" in result.stdout


def test_scaledobject_schema_rejects_broken_triggers(rendered, tmp_path):
    docs = objects(rendered["gpu"])
    spec = find(docs, "ScaledObject")["spec"]
    spec["minReplicas"] = 2  # the HPA's spelling, not KEDA's minReplicaCount
    spec["triggers"][0]["metadata"]["treshold"] = spec["triggers"][0]["metadata"].pop("threshold")
    result = run_schema_validation(write(tmp_path, docs))
    assert result.returncode == 1
    assert "'minReplicas' was unexpected" in result.stdout, result.stdout
    assert "'threshold' is a required property" in result.stdout, result.stdout


# ------------------------------------------------------------------------------------------------ policies


def test_cross_object_policies_hold(rendered):
    problems = list(validator.policy_errors(validator.load(rendered.values())))
    assert problems == []


def mutate_prod(rendered, change) -> dict[str, list[dict]]:
    docs = copy.deepcopy(objects(rendered["prod"]))
    change({d["kind"]: d for d in docs})
    return {"prod.yaml": docs}


def container_of(by_kind: dict) -> dict:
    return by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]


BROKEN = {
    "grace period shorter than preStop + drain": (
        lambda k: k["Deployment"]["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=20),
        "requests would be cut off",
    ),
    "misspelt setting in the ConfigMap": (
        lambda k: k["ConfigMap"]["data"].update(BERTSERVE_MAX_QEUE="8"),
        "BERTSERVE_MAX_QEUE is not a setting",
    ),
    "Service selecting no pods": (
        lambda k: k["Service"]["spec"]["selector"].update({"app.kubernetes.io/component": "api"}),
        "selector matches no Deployment",
    ),
    "ServiceMonitor on a port the Service lacks": (
        lambda k: k["ServiceMonitor"]["spec"]["endpoints"][0].update(port="metrics"),
        "endpoint port metrics is not a port name",
    ),
    "pods scraped twice (annotations and a ServiceMonitor)": (
        lambda k: k["Deployment"]["spec"]["template"]["metadata"].update(
            annotations={"prometheus.io/scrape": "true"}
        ),
        "also has prometheus.io/scrape",
    ),
    "ServiceMonitor kube-prometheus-stack does not select": (
        lambda k: k["ServiceMonitor"]["metadata"]["labels"].pop("release"),
        "ServiceMonitor/bertserve/bertserve: no `release` label",
    ),
    "PrometheusRule kube-prometheus-stack does not select": (
        lambda k: k["PrometheusRule"]["metadata"]["labels"].pop("release"),
        "PrometheusRule/bertserve/bertserve: no `release` label",
    ),
    "probe on another path": (
        lambda k: container_of(k)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "readinessProbe checks /healthz",
    ),
    "liveness that restarts a pod while a worker is replaced": (
        lambda k: container_of(k)["livenessProbe"]["httpGet"].update(path="/health"),
        "livenessProbe checks /health, not /live",
    ),
    "root filesystem writable": (
        lambda k: container_of(k)["securityContext"].update(readOnlyRootFilesystem=False),
        "readOnlyRootFilesystem must be true",
    ),
    "privilege escalation allowed": (
        lambda k: container_of(k)["securityContext"].pop("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation must be false",
    ),
    "startup budget too short for model loading": (
        lambda k: container_of(k)["startupProbe"].update(failureThreshold=3),
        "startupProbe allows 15 s to load models",
    ),
    "claim that does not exist": (
        lambda k: k["PersistentVolumeClaim"]["metadata"].update(name="models"),
        "PVC bertserve/bertserve-models is not defined",
    ),
    "image without a tag": (
        lambda k: container_of(k).update(image="registry.example.com/bertserve"),
        "has no fixed tag or digest",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_policies_reject(rendered, case):
    change, expected = BROKEN[case]
    problems = list(validator.policy_errors(mutate_prod(rendered, change)))
    assert any(expected in problem for problem in problems), problems


def trigger_query(by_kind: dict, query: str) -> None:
    by_kind["ScaledObject"]["spec"]["triggers"][0]["metadata"]["query"] = query


BROKEN_GPU = {
    "GPU without BERTSERVE_DEVICE=cuda": (
        lambda k: k["ConfigMap"]["data"].pop("BERTSERVE_DEVICE"),
        "gets a GPU but not BERTSERVE_DEVICE=cuda",
    ),
    "KEDA query on a metric the service does not export": (
        lambda k: trigger_query(k, "sum(bertserve_inflight_requests)"),
        "queries bertserve_inflight_requests, not a bertserve metric",
    ),
    "KEDA query on no bertserve metric": (
        lambda k: trigger_query(k, "sum(up)"),
        "queries no bertserve_* metric",
    ),
    "KEDA scaling another Deployment": (
        lambda k: k["ScaledObject"]["spec"]["scaleTargetRef"].update(name="bertserve-gpu"),
        "scaleTargetRef Deployment/bertserve-gpu is not rendered",
    ),
    "KEDA bounds upside down": (
        lambda k: k["ScaledObject"]["spec"].update(minReplicaCount=9),
        "minimum replicas 9 > maximum 8",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_GPU))
def test_policies_reject_gpu(rendered, case):
    change, expected = BROKEN_GPU[case]
    docs = copy.deepcopy(objects(rendered["gpu"]))
    change({d["kind"]: d for d in docs})
    problems = list(validator.policy_errors({"gpu.yaml": docs}))
    assert any(expected in problem for problem in problems), problems


def test_policies_reject_two_autoscalers_on_one_deployment(rendered):
    docs = [*objects(rendered["gpu"]), find(objects(rendered["prod"]), "HorizontalPodAutoscaler")]
    problems = list(validator.policy_errors({"gpu.yaml": docs}))
    assert any("Deployment bertserve has 2 autoscalers, which fight" in p for p in problems), problems


# ------------------------------------------------------------------------------------------------ checkov


def run_checkov(*paths: Path) -> dict:
    checkov = ci_tool("checkov")
    command = [checkov, "--framework", "kubernetes", "--skip-download", "-o", "json", "-f", *map(str, paths)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.stdout.strip(), (
        f"checkov printed nothing (exit {result.returncode}):\n{result.stderr[-3000:]}"
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert all(r.get("check_type") == "kubernetes" for r in reports), reports
    return {"results": reports, "returncode": result.returncode}


def test_checkov_passes_with_every_skip_justified(rendered):
    outcome = run_checkov(*rendered.values())
    summary = outcome["results"][0]["summary"]
    failed = outcome["results"][0]["results"]["failed_checks"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 100, summary
    assert failed == [], [(c["check_id"], c["resource"], c["check_name"]) for c in failed]
    assert outcome["returncode"] == 0
    for skipped in outcome["results"][0]["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 40, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_checkov_fails_an_unsafe_deployment(rendered, tmp_path):
    docs = objects(rendered["dev"])
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"] = {"privileged": True}
    pod.pop("securityContext")
    outcome = run_checkov(write(tmp_path, docs))
    failed = {c["check_id"] for c in outcome["results"][0]["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23"} <= failed, failed
    assert outcome["returncode"] != 0


# ------------------------------------------------------------------------------------------------ rules copy


def test_prometheusrule_is_generated_from_monitoring_rules():
    result = subprocess.run(
        ["python3", str(REPO / "scripts" / "sync-prometheusrule.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    generated = yaml.safe_load((REPO / "k8s/components/prometheus-operator/prometheusrule.yaml").read_text())
    source = yaml.safe_load((REPO / "monitoring/rules.yml").read_text())
    assert generated["spec"]["groups"] == source["groups"]


def test_the_release_label_changes_as_docs_deploy_md_says(tmp_path):
    """The `patches:` entry docs/deploy.md prints, added to a copy of the prod overlay, relabels the
    ServiceMonitor and the PrometheusRule, and nothing else."""
    import shutil

    deploy = (REPO / "docs" / "deploy.md").read_text()
    section = deploy[deploy.index("- **Prometheus**") :]
    entry = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)[1]
    printed = yaml.safe_load(entry)
    assert isinstance(printed, list) and len(printed) == 1, entry
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "prod" / "kustomization.yaml"
    kustomization = yaml.safe_load(overlay.read_text())
    kustomization["patches"] += printed
    overlay.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    kubectl = binary("kubectl")
    before = subprocess.run(
        [kubectl, "kustomize", str(REPO / "k8s/overlays/prod")], capture_output=True, text=True
    )
    after = subprocess.run([kubectl, "kustomize", str(overlay.parent)], capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    changed = {}
    for old, new in zip(yaml.safe_load_all(before.stdout), yaml.safe_load_all(after.stdout), strict=True):
        if old != new:
            changed[new["kind"]] = new["metadata"]["labels"]["release"]
            old["metadata"]["labels"]["release"] = new["metadata"]["labels"]["release"]
            assert old == new
    assert changed == {"ServiceMonitor": "prometheus", "PrometheusRule": "prometheus"}


# ------------------------------------------------------------------------------------------------ logs

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}


def logged_lines() -> list[tuple[str, str, str]]:
    """(format string with each %-placeholder as …, level, where) of every logger call in bertserve/."""
    import ast

    found = []
    for path in sorted((REPO / "bertserve").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"
                and node.args
            ):
                parts = node.args[0]
                texts = [parts] if isinstance(parts, ast.Constant) else getattr(parts, "values", [])
                text = "".join(
                    p.value for p in texts if isinstance(p, ast.Constant) and isinstance(p.value, str)
                )
                found.append((re.sub(r"%[sdgr]", "…", text), node.func.attr, f"{path.name}:{node.lineno}"))
    return found


def documented_lines() -> list[tuple[str, str]]:
    operations = (REPO / "docs" / "operations.md").read_text()
    return re.findall(r"^\| `([^`]+)` \| (debug|info|warning|error|critical) \|", operations, re.MULTILINE)


def test_the_lines_operators_are_told_to_read_are_logged_at_a_level_every_overlay_shows(rendered):
    documented = documented_lines()
    assert len(documented) >= 8
    code = logged_lines()
    shown = {}
    for name in ("dev", "prod", "gpu"):
        shown[name] = find(objects(rendered[name]), "ConfigMap")["data"].get("BERTSERVE_LOG_LEVEL", "info")
    problems = []
    for line, level in documented:
        calls = [(lvl, where) for text, lvl, where in code if text.startswith(line)]
        if len(calls) != 1:
            problems.append(f"{line!r}: {len(calls)} logger calls start so: {calls}")
            continue
        [(in_code, where)] = calls
        if LEVELS[in_code] != LEVELS[level]:
            problems.append(f"{line!r}: documented {level}, logged {in_code} ({where})")
        hidden = [name for name, at in shown.items() if LEVELS[in_code] < LEVELS[at.lower()]]
        if hidden:
            problems.append(f"{line!r} ({in_code}) is hidden by BERTSERVE_LOG_LEVEL in {hidden}: {shown}")
    assert problems == []
