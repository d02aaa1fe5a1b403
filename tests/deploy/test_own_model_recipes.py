"""docs/deploy.md's "serve your own model" recipes, as printed.

Docker: the tests have no container engine, so `docker run` itself is not run. What can be checked is: the
mount's target is the image's store (the Dockerfile's BERTSERVE_STORE), each `-e` is a setting with a valid
value, the image is the one the page builds; then the import runs as printed and the store it made is served
with the `-e` variables, outside a container, and answers the printed call. Kubernetes: the overlay is
rendered as printed, inside a copy of k8s/, and its Deployment must read a ConfigMap holding the literal."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import httpx
import pytest
import yaml

from bertserve.config import Settings
from tests.deploy.tools import REPO, binary
from tests.readme_examples import import_as_printed, parse_call, top_labels, transcript
from tests.server_process import running_server
from tests.tiny_models import build_classifier

PAGE = (REPO / "docs" / "deploy.md").read_text()
DOCKERFILE = (REPO / "Dockerfile").read_text()


def env_settings(pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs, each checked to be a BERTSERVE_* setting whose value Settings accepts."""
    found = dict(pair.split("=", 1) for pair in pairs)
    for name, value in found.items():
        field = name.removeprefix("BERTSERVE_").lower()
        assert name.startswith("BERTSERVE_") and field in Settings.model_fields, f"{name} is not a setting"
        Settings(**{field: value})
    return found


def docker_run(line: str) -> tuple[str, str, dict[str, str], str]:
    """(host path, container path) of its one -v, its -e settings and its image."""
    words = shlex.split(line)[1:]
    assert words[:2] == ["docker", "run"], line
    volumes = [words[i + 1] for i, word in enumerate(words) if word == "-v"]
    (volume,) = volumes
    host, container = volume.split(":")[:2]
    return host, container, env_settings([words[i + 1] for i, w in enumerate(words) if w == "-e"]), words[-1]


def test_the_docker_recipe_mounts_the_image_store_and_sets_real_settings(tmp_path):
    (imported, _), (run, _), (call, output) = transcript(PAGE, "docker-own-model")
    host, container, env, image = docker_run(run)
    assert f"BERTSERVE_STORE={container}" in DOCKERFILE, "the mount is not where the image reads its store"
    assert image in re.findall(r"docker build -t (\S+) \.", PAGE), f"{image} is not built on this page"
    import_args = shlex.split(imported)[2:]
    store_name = import_args[import_args.index("--store") + 1]
    assert host == f"$PWD/{store_name}", "the mount is not the store the import wrote"

    labels = ("negative", "neutral", "positive")
    import_as_printed(import_args, build_classifier(tmp_path / "hf", labels=labels), tmp_path)
    printed = parse_call(call, output)
    with running_server(tmp_path / store_name, env=env) as base:
        answer = httpx.post(f"{base}{printed.path}", json=printed.body, timeout=60).json()
    assert (answer["model"], answer["version"]) == (printed.answer["model"], printed.answer["version"])
    assert set(top_labels(answer)) <= set(labels)


def test_the_docker_recipe_check_refuses_a_variable_that_is_no_setting():
    line = "$ docker run -v x:/models -e BERTSERVE_DEFAULT_CLASIFY_MODEL=mine bertserve"
    with pytest.raises(AssertionError, match="BERTSERVE_DEFAULT_CLASIFY_MODEL is not a setting"):
        docker_run(line)
    with pytest.raises(ValueError, match="max_queue"):
        docker_run("$ docker run -v x:/models -e BERTSERVE_MAX_QUEUE=0 bertserve")


def test_the_kubernetes_overlay_sets_the_default_model_in_the_configmap_the_pods_read(tmp_path):
    block = PAGE.split("<!-- BEGIN k8s-own-model -->", 1)[1].split("<!-- END k8s-own-model -->", 1)[0]
    text = re.search(r"```yaml\n(.*?)```", block, re.DOTALL)[1]
    path = re.match(r"# (k8s/\S+/kustomization\.yaml):", text)[1]
    literals = yaml.safe_load(text)["configMapGenerator"][0]["literals"]
    expected = env_settings(literals)
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(text)
    rendered = subprocess.run(
        [binary("kubectl"), "kustomize", str((tmp_path / path).parent)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    read = {
        source["configMapRef"]["name"]
        for container in deployment["spec"]["template"]["spec"]["containers"]
        for source in container.get("envFrom", [])
        if "configMapRef" in source
    }
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] in read]
    assert maps, f"the Deployment reads no rendered ConfigMap ({read})"
    assert any(expected.items() <= m["data"].items() for m in maps), [m["data"] for m in maps]
