"""The image a release pins is the image every pod runs.

Each deployable kustomization (every folder of k8s/overlays/, found by listing it, and k8s/store-admin) pins
the image in one `images:` entry of its own; its rendered pods, serving and init containers alike, must run
exactly that image. And each `kustomize edit set image` that docs/deploy.md prints, run on a copy of k8s/ as
printed and with another tag, registry or a digest in its place, must reach every pod of its folder (and,
pinning another registry, leave the other folders' pods on their own pins), so the documented release bump
(and `kubectl rollout undo` after it) changes what the server runs.

kubectl's embedded kustomize renders but has no `edit`; where a `kustomize` binary is on PATH the commands
run through it, else the test writes the `images:` entry the command writes (`set_image` below).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.tools import REPO, binary

DOC = REPO / "docs" / "deploy.md"
OVERLAYS = sorted(
    str(p.parent.relative_to(REPO)) for p in (REPO / "k8s" / "overlays").glob("*/kustomization.yaml")
)
PINNED = [*OVERLAYS, "k8s/store-admin"]
POD_TEMPLATES = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# `cd FOLDER && kustomize edit set image ARG... [&& cd -]`, one line of a ```bash block
PIN = re.compile(r"cd (?P<folder>\S+) && kustomize edit set image (?P<args>[^&#]+?)(?: && cd -)?")


def render(kubectl: str, folder: Path) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def images(docs: list[dict]) -> dict[str, str]:
    """`Kind/name container` -> image, for every container and init container of every pod rendered."""
    found = {}
    for doc in docs:
        if doc["kind"] in POD_TEMPLATES:
            spec = doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            spec = doc["spec"]
        else:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            found[f"{doc['kind']}/{doc['metadata']['name']} {container['name']}"] = container["image"]
    assert found, "renders no pod"
    return found


def pinned_image(folder: Path) -> str:
    """The image the folder's own `images:` entry (exactly one) pins."""
    entries = yaml.safe_load((folder / "kustomization.yaml").read_text()).get("images") or []
    assert len(entries) == 1, f"{folder} pins the image in {len(entries)} images: entries, not 1: {entries}"
    [entry] = entries
    image = entry.get("newName") or entry["name"]
    if entry.get("newTag"):
        image += f":{entry['newTag']}"
    if entry.get("digest"):
        image += f"@{entry['digest']}"
    return image


def assert_runs_its_pin(kubectl: str, root: Path, target: str) -> None:
    want = pinned_image(root / target)
    wrong = {where: image for where, image in images(render(kubectl, root / target)).items() if image != want}
    assert not wrong, f"{target} pins {want}, but its pods run {wrong}"


# ------------------------------------------------------------------------------------- the repo's manifests


@pytest.mark.parametrize("target", PINNED)
def test_every_pod_runs_the_image_its_kustomization_pins(target):
    assert_runs_its_pin(binary("kubectl"), REPO, target)


def test_the_base_leaves_the_image_to_the_overlays():
    """An `images:` entry in the base renames the image before an overlay sees it, so the overlay's entry for
    `bertserve` matches nothing and its pin never reaches the pods."""
    base = REPO / "k8s" / "base"
    assert "images" not in yaml.safe_load((base / "kustomization.yaml").read_text())
    assert set(images(render(binary("kubectl"), base)).values()) == {"bertserve"}


# ---------------------------------------------------------------------------- the pins docs/deploy.md prints


def documented_pins() -> list[tuple[str, list[str], str]]:
    """(folder, arguments, the whole line) of every `kustomize edit set image` in the doc's bash blocks."""
    pins = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        for line in block.splitlines():
            line = line.strip()
            if "kustomize edit" in line:
                match = PIN.fullmatch(line)
                assert match, f"docs/deploy.md prints a kustomize edit this test cannot read: {line}"
                pins.append((match["folder"], shlex.split(match["args"]), line))
    return pins


def test_the_doc_prints_the_release_pin_of_each_folder_it_releases():
    folders = [folder for folder, _, _ in documented_pins()]
    assert len(folders) == len(set(folders)), folders
    assert {"k8s/overlays/prod", "k8s/overlays/gpu", "k8s/store-admin"} <= set(folders), folders
    assert set(folders) <= set(PINNED), folders


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of `name[:tag][@digest]` (a registry's :port is part of the name)."""
    image, _, digest = image.partition("@")
    name, colon, tag = image.rpartition(":")
    if not colon or "/" in tag:
        return image, None, digest or None
    return name, tag, digest or None


def set_image(folder: Path, args: list[str]) -> None:
    """What `kustomize edit set image NAME=IMAGE...` writes to folder/kustomization.yaml, for the form
    docs/deploy.md prints: the `images:` entry named NAME (added if there is none) gets IMAGE's name as its
    newName (none when it is NAME) and IMAGE's tag as newTag or its digest as digest, nothing else; entries
    stay sorted by name."""
    path = folder / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    entries = {entry["name"]: entry for entry in kustomization.get("images") or []}
    for arg in args:
        old, equals, new = arg.partition("=")
        assert equals, f"{arg}: the doc's pins name the image they replace (NAME=IMAGE)"
        new_name, tag, digest = split_image(new)
        entry = {"name": old} | ({"newName": new_name} if new_name != old else {})
        entries[old] = entry | ({"newTag": tag} if tag else {}) | ({"digest": digest} if digest else {})
    kustomization["images"] = [entries[name] for name in sorted(entries)]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))


def test_set_image_writes_what_kustomize_edit_writes(tmp_path):
    """The example of `kustomize edit set image --help`, on a kustomization that already pins one of them."""
    digest = "sha256:24a0c4b4a4c0eb97a1aabb8e29f18e917d05abfe1b7a7c07857230879ce7d3d3"
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"images": [{"name": "postgres", "newName": "postgres", "digest": "sha256:1"}]})
    )
    set_image(
        tmp_path, ["postgres=eu.gcr.io/my-project/postgres:latest", f"my-app=my-registry/my-app@{digest}"]
    )
    set_image(tmp_path, ["mysql=mariadb", "redis=localhost:5000/redis"])
    assert yaml.safe_load((tmp_path / "kustomization.yaml").read_text())["images"] == [
        {"name": "my-app", "newName": "my-registry/my-app", "digest": digest},
        {"name": "mysql", "newName": "mariadb"},
        {"name": "postgres", "newName": "eu.gcr.io/my-project/postgres", "newTag": "latest"},
        {"name": "redis", "newName": "localhost:5000/redis"},
    ]
    assert split_image("localhost:5000/ml/bertserve:1.0@sha256:ab") == (
        "localhost:5000/ml/bertserve",
        "1.0",
        "sha256:ab",
    )


def retagged(args: list[str], how: str) -> list[str]:
    """The documented NAME=IMAGE arguments with IMAGE's tag, or its registry and tag, or a digest changed."""
    changed = []
    for arg in args:
        old, _, new = arg.partition("=")
        name, tag, _ = split_image(new)
        suffix = (
            "-cuda" if tag and tag.endswith("-cuda") else "-models" if tag and tag.endswith("-models") else ""
        )
        changed.append(
            {
                "another tag": f"{old}={name}:9.9.9{suffix}",
                "another registry": f"{old}=mirror.example.org:5000/ml/bertserve:9.9.9{suffix}",
                "a digest": f"{old}={name}@sha256:{'0123456789abcdef' * 4}",
            }[how]
        )
    return changed


CHANGES = ["as printed", "another tag", "another registry", "a digest"]


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize(
    ("folder", "args", "line"), documented_pins(), ids=[folder for folder, _, _ in documented_pins()]
)
def test_the_documented_pin_reaches_every_pod_of_its_folder(tmp_path, folder, args, line, change):
    kubectl = binary("kubectl")
    root = tmp_path / "repo"
    shutil.copytree(REPO / "k8s", root / "k8s")
    others = {target: pinned_image(root / target) for target in PINNED if target != folder}
    if change != "as printed":
        args = retagged(args, change)
        line = f"cd {folder} && kustomize edit set image {shlex.join(args)} && cd -"
    if shutil.which("kustomize"):
        result = subprocess.run(["bash", "-ec", line], cwd=root, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
    else:  # kubectl kustomize has no `edit`: write what it writes
        set_image(root / folder, args)
    [want] = {arg.partition("=")[2] for arg in args}
    wrong = {where: image for where, image in images(render(kubectl, root / folder)).items() if image != want}
    assert not wrong, f"after `{line}` the pods of {folder} run {wrong}, not {want}"
    if change == "another registry":  # each other folder still runs its own pin (gpu its CUDA image)
        for target, pin in others.items():
            assert pinned_image(root / target) == pin
            assert_runs_its_pin(kubectl, root, target)
