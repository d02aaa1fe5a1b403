"""A damaged store: a corrupt or missing weight file, a damaged manifest or a name folder with no version
refuses that version (or name) alone (with a log line naming why) while the rest serve; a publish killed
mid-way (SIGKILL, a real process) leaves no visible version."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, verify_version
from tests.http.conftest import build_tiny_store
from tests.server_process import log_entries, running_server

WEIGHTS = "model.safetensors"


def log_errors(log: Path) -> list[str]:
    return [entry["message"] for entry in log_entries(log) if entry["level"] == "error"]


def with_extra_word(model_dir: Path, folder: Path) -> Path:
    """A copy whose tokenizer knows one word more than the model has embeddings for: consistent files, so
    verification passes, but any request holding that word would fail its batch."""
    shutil.copytree(model_dir, folder)
    (folder / "tokenizer.json").unlink()  # rebuilt from vocab.txt
    with open(folder / "vocab.txt", "a") as vocab:
        vocab.write("zzzextra\n")
    return folder


def test_damaged_versions_are_refused_and_the_rest_serve(tmp_path, tiny_classifier_dir):
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    import_hf_folder(store, tiny_classifier_dir, "sentiment")  # sentiment@3
    import_hf_folder(store, with_extra_word(tiny_classifier_dir, tmp_path / "big-vocab"), "sentiment")  # @4
    truncated = store.version_dir("sentiment", "2") / WEIGHTS
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (store.version_dir("topics", "1") / WEIGHTS).unlink()
    flipped = store.version_dir("sentiment", "3") / WEIGHTS
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    flipped.write_bytes(bytes(data))

    with running_server(store.root) as base:
        served = {
            (m["name"], v["version"]): v["served"]
            for m in httpx.get(f"{base}/v1/models", timeout=30).json()["models"]
            for v in m["versions"]
        }
        assert served == {
            ("sentiment", "1"): True,
            ("sentiment", "2"): False,
            ("sentiment", "3"): False,
            ("sentiment", "4"): False,
            ("topics", "1"): False,
            ("mlm", "1"): True,
        }
        default = httpx.post(f"{base}/v1/classify", json={"inputs": "the drug worked"}, timeout=30)
        assert default.status_code == 200 and default.json()["version"] == "1"
        assert httpx.post(f"{base}/v1/fill-mask", json={"inputs": "a [MASK]"}, timeout=30).status_code == 200
        for ref in ("sentiment@2", "sentiment@3", "topics"):
            refused = httpx.post(f"{base}/v1/classify", json={"inputs": "x", "model": ref}, timeout=30)
            assert refused.status_code == 404, (ref, refused.text)
        # KServe's readiness and metadata say what the inference processes serve, not what the store holds
        v2 = f"{base}/v2/models"
        ready = httpx.get(f"{v2}/sentiment/versions/1/ready", timeout=30)
        assert ready.status_code == 200 and ready.json() == {"name": "sentiment", "ready": True}
        for model, version in (("sentiment", "2"), ("sentiment", "3"), ("sentiment", "4"), ("topics", "1")):
            not_ready = httpx.get(f"{v2}/{model}/versions/{version}/ready", timeout=30)
            assert not_ready.status_code == 400, (model, version, not_ready.text)
            assert not_ready.json() == {"name": model, "ready": False}
            assert httpx.get(f"{v2}/{model}/versions/{version}", timeout=30).status_code == 404
        assert httpx.get(f"{v2}/topics/ready", timeout=30).json() == {"name": "topics", "ready": False}
        assert httpx.get(f"{v2}/sentiment", timeout=30).json()["versions"] == ["1"]
        errors = log_errors(base.log)

    def refusal(ref: str) -> str:
        found = [m for m in errors if f"refusing {ref}" in m]
        assert len(found) == 1, (ref, errors)
        return found[0]

    assert f"file {WEIGHTS} has" in refusal("sentiment@2") and "manifest says" in refusal("sentiment@2")
    assert f"file {WEIGHTS} does not match its sha256" in refusal("sentiment@3")
    assert f"file {WEIGHTS} is missing" in refusal("topics@1")
    assert "the tokenizer has token id" in refusal("sentiment@4") and "the model embeds only" in refusal(
        "sentiment@4"
    )
    assert not [m for m in errors if "sentiment@1" in m or "mlm@1" in m]


def truncate_manifest(folder: Path) -> None:
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])


def test_names_without_versions_and_damaged_manifests_are_refused_alone(tmp_path, tiny_classifier_dir):
    """What a failed or killed command, or a damaged disk, leaves in a store: a name folder holding only a
    `.lock` or a killed first publish's staging folder, a truncated manifest on a model's newest version or
    on a model's only one. Each is refused alone, at start and when it appears while serving: logged once,
    skipped, never a 500 on any route."""
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    (store.root / "typo").mkdir()
    (store.root / "typo" / ".lock").touch()
    shutil.copytree(tiny_classifier_dir, store.root / "ghost" / ".publish-0123")
    import_hf_folder(store, tiny_classifier_dir, "sentiment")  # sentiment@3, its newest version
    truncate_manifest(store.version_dir("sentiment", "3"))
    import_hf_folder(store, tiny_classifier_dir, "broken")
    truncate_manifest(store.version_dir("broken", "1"))

    def routes_answer(base: str, damaged: list[str]) -> None:
        models = httpx.get(f"{base}/v1/models", timeout=30)
        assert models.status_code == 200, models.text
        listed = {m["name"]: m for m in models.json()["models"]}
        assert sorted(listed) == ["mlm", "sentiment", "topics"]
        versions = {v["version"]: v for v in listed["sentiment"]["versions"]}
        assert listed["sentiment"]["task"] == "classification" and versions["1"]["served"]
        for version in damaged:
            assert not versions[version]["served"]
            assert "manifest.json is not a valid manifest" in versions[version]["problem"]
        assert versions["1"]["problem"] is None
        ok = [
            httpx.post(f"{base}/v1/classify", json={"inputs": "the drug worked"}, timeout=30),
            httpx.post(f"{base}/", json={"inputs": "the drug worked"}, timeout=30),
            httpx.get(f"{base}/info", timeout=30),
            httpx.post(f"{base}/tokenize", json={"inputs": "the drug worked"}, timeout=30),
            httpx.get(f"{base}/v1/models/sentiment", timeout=30),
            httpx.get(f"{base}/v2/models/sentiment", timeout=30),
            httpx.get(f"{base}/v2/models/sentiment/versions/1/ready", timeout=30),
        ]
        assert [r.status_code for r in ok] == [200] * len(ok), [r.text for r in ok]
        missing = [
            *(
                httpx.post(f"{base}/v1/classify", json={"inputs": "x", "model": f"sentiment@{v}"}, timeout=30)
                for v in damaged
            ),
            *(httpx.get(f"{base}/v2/models/sentiment/versions/{v}", timeout=30) for v in damaged),
            *(httpx.get(f"{base}/v1/models/{name}", timeout=30) for name in ("typo", "ghost", "broken")),
            *(httpx.get(f"{base}/v2/models/{name}", timeout=30) for name in ("typo", "ghost", "broken")),
            httpx.post(f"{base}/v1/classify", json={"inputs": "x", "model": "broken"}, timeout=30),
        ]
        assert [r.status_code for r in missing] == [404] * len(missing), [r.text for r in missing]

    with running_server(store.root, "--reload-interval", "0") as base:
        routes_answer(base, ["3"])
        # while serving: the leftovers of a failed `store rollback late` and a new damaged version appear
        (store.root / "late").mkdir()
        (store.root / "late" / ".lock").touch()
        staged = store.model_dir("sentiment") / ".publish-4"
        shutil.copytree(store.version_dir("sentiment", "2"), staged)
        truncate_manifest(staged)
        staged.rename(store.version_dir("sentiment", "4"))
        deadline = time.monotonic() + 60
        while not [m for m in log_errors(base.log) if "refusing sentiment@4" in m]:
            assert time.monotonic() < deadline, "the workers never looked at sentiment@4"
            time.sleep(0.2)
        routes_answer(base, ["3", "4"])
        entries = log_entries(base.log)

    said = [e for e in entries if e["logger"] != "bertserve.access"]
    for ref in ("sentiment@3", "sentiment@4"):
        lines = [e for e in said if ref in e["message"]]
        assert [e["level"] for e in lines] == ["error"], lines
        refusal = f"refusing {ref}, it cannot be loaded: {ref}: manifest.json is not a valid manifest"
        assert refusal in lines[0]["message"]
    for name, why in [
        ("typo", "no published versions"),
        ("ghost", "no published versions"),
        ("broken", "no version has a readable manifest"),
    ]:
        lines = [(e["level"], e["message"]) for e in said if name in e["message"]]
        assert lines == [("warning", f"store: {name}: {why} (`bertserve store verify` lists every problem)")]
    assert not [e for e in said if e["level"] == "error" and "refusing" not in e["message"]], said


# ---- a publish killed in the middle --------------------------------------------------------------------

# Runs the real `bertserve store import`, pausing at one point of publish_version so the test can SIGKILL it
# there: "staged" (files moved into the hidden staging folder, being hashed) or "manifest" (manifest written
# in the staging folder, model lock held, just before the rename that would publish it).
PAUSING_IMPORT = """
import sys, time
from pathlib import Path
import bertserve.store.publish as publish
from bertserve.cli import app

point, ready = sys.argv[1], Path(sys.argv[2])
def pause():
    ready.touch()
    time.sleep(600)
original = getattr(publish, {"staged": "hash_folder", "manifest": "write_atomic"}[point])
def paused(*args):
    if point == "staged":
        pause()
    result = original(*args)
    pause()
    return result
setattr(publish, original.__name__, paused)
app(sys.argv[3:], prog_name="bertserve")
"""


def bertserve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bertserve.cli", *args]


@pytest.mark.parametrize("point", ["staged", "manifest"])
def test_a_publish_killed_midway_leaves_no_version(tmp_path, tiny_classifier_dir, point):
    store = ModelStore(tmp_path / "store")
    import_hf_folder(store, tiny_classifier_dir, "sentiment")
    ready = tmp_path / "paused"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            PAUSING_IMPORT,
            point,
            str(ready),
            "store",
            "import",
            str(tiny_classifier_dir),
            "--name",
            "sentiment",
            "--store",
            str(store.root),
        ],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "TMPDIR": str(tmp_path)},  # what the killed import leaves behind stays in tmp_path
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None, f"the import exited with {child.returncode} before pausing"
            assert time.monotonic() < deadline, "the import never reached the pause point"
            time.sleep(0.05)
        staging = list(store.model_dir("sentiment").glob(".publish-*"))
        assert len(staging) == 1 and (staging[0] / WEIGHTS).is_file(), "killed while the files were staged"
        assert ((staging[0] / "manifest.json").is_file()) == (point == "manifest")
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    assert store.versions("sentiment") == ["1"], "no half version is visible"
    listed = subprocess.run(
        bertserve_command("store", "list", "--store", str(store.root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and "publish" not in listed.stdout, listed.stdout + listed.stderr

    again = subprocess.run(
        bertserve_command(
            "store", "import", str(tiny_classifier_dir), "--name", "sentiment", "--store", str(store.root)
        ),
        capture_output=True,
        text=True,
        timeout=120,  # the killed import held the model lock: it must have been released with the process
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert store.versions("sentiment") == ["1", "2"]
    verified = subprocess.run(
        bertserve_command("store", "verify", "--store", str(store.root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (
        verify_version(store, "sentiment", "2").files.keys()
        == verify_version(store, "sentiment", "1").files.keys()
    )
