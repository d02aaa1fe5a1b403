"""k8s/kserve/: the ServingRuntime and the InferenceService validate against KServe's CRD schemas (offline
subsets, kserve_schemas/README.md), each schema is shown to reject broken objects, and the runtime starts
bertserve as its CLI and probes expect."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema_rs  # schemathesis' validator, in the dev extra already
import pytest
import yaml

from bertserve.config import Settings
from tests.deploy.tools import REPO

SCHEMAS = Path(__file__).parent / "kserve_schemas"
MANIFESTS = {
    "servingruntime.yaml": "servingruntime-serving.kserve.io-v1alpha1.json",
    "inferenceservice.yaml": "inferenceservice-serving.kserve.io-v1beta1.json",
}


def load(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((REPO / "k8s" / "kserve" / name).read_text()) if d]
    return doc


def errors(doc: dict, manifest: str) -> list[str]:
    schema = json.loads((SCHEMAS / MANIFESTS[manifest]).read_text())
    validator = jsonschema_rs.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("manifest", list(MANIFESTS))
def test_manifest_validates(manifest):
    assert errors(load(manifest), manifest) == []


def _broken(manifest: str):
    runtime = manifest == "servingruntime.yaml"
    doc = load(manifest)
    typo = copy.deepcopy(doc)
    (typo["spec"]["containers"][0] if runtime else typo["spec"]["predictor"]["model"])[
        "storageURI" if not runtime else "argz"
    ] = ["x"]
    wrong_type = copy.deepcopy(doc)
    if runtime:
        wrong_type["spec"]["supportedModelFormats"][0]["autoSelect"] = "no"
    else:
        wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    no_required = copy.deepcopy(doc)
    if runtime:
        del no_required["spec"]["containers"][0]["name"]
    else:
        del no_required["spec"]["predictor"]["model"]["modelFormat"]["name"]
    return [typo, wrong_type, no_required]  # each differs from the valid object in one place


@pytest.mark.parametrize("manifest", list(MANIFESTS))
def test_schema_rejects_broken_objects(manifest):
    for doc in _broken(manifest):
        assert errors(doc, manifest), doc


def test_runtime_starts_bertserve_as_the_cli_and_probes_expect():
    from typer.main import get_command

    from bertserve.cli import app

    runtime, service = load("servingruntime.yaml"), load("inferenceservice.yaml")
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container" and container["args"][0] == "serve"
    serve = get_command(app).commands["serve"]
    flags = {opt for param in serve.params for opt in param.opts}
    given = dict(arg.removeprefix("--").split("=", 1) for arg in container["args"][1:])
    assert {f"--{name}" for name in given} <= flags
    assert given["model-dir"] == "/mnt/models" and given["model-name"] == "{{.Name}}"
    port = int(given["port"])
    assert container["ports"][0]["containerPort"] == port
    open_paths = Settings().auth_open_paths.split(",")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port
        assert container[probe]["httpGet"]["path"] in open_paths  # probes send no API key
    store = next(e["value"] for e in container["env"] if e["name"] == "BERTSERVE_STORE")
    assert any(store.startswith(m["mountPath"]) for m in container["volumeMounts"])  # writable
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
