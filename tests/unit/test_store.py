"""The store contract of model-store.md: atomic numbered publish, hashes, aliases, rollback, gate, import."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from bertserve.store.errors import IntegrityError, PromotionRefused, StoreError, UnknownModelError
from bertserve.store.layout import ModelStore
from bertserve.store.publish import (
    import_hf_folder,
    promote,
    publish_version,
    rollback,
    set_alias,
    verify_version,
)
from bertserve.store.resolve import parse_ref, resolve


def _publish(root: str, source: str) -> str:
    return publish_version(
        ModelStore(root), "m", source, {"task": "classification"}, created_by="test"
    ).version


def test_import_hashes_every_file_and_loads_back(store_root, tiny_classifier_dir):
    store = ModelStore(store_root)
    manifest = import_hf_folder(store, tiny_classifier_dir, "sentiment")
    assert (manifest.name, manifest.version, manifest.task) == ("sentiment", "1", "classification")
    assert manifest.labels == ["negative", "neutral", "positive"] and manifest.problem_type == "single_label"
    folder = store.version_dir("sentiment", "1")
    on_disk = {p.name for p in folder.iterdir()} - {"manifest.json"}
    assert set(manifest.files) == on_disk and "model.safetensors" in on_disk and "tokenizer.json" in on_disk
    assert verify_version(store, "sentiment", "1").version == "1"
    original = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).state_dict()
    stored = load_file(folder / "model.safetensors")
    assert all(torch.equal(original[k], stored[k]) for k in stored)


def test_pickle_weights_are_converted_to_safetensors(store_root, tiny_classifier_dir, tmp_path):
    legacy = tmp_path / "legacy"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    model.save_pretrained(legacy)
    (legacy / "model.safetensors").unlink()
    torch.save(model.state_dict(), legacy / "pytorch_model.bin")  # the legacy pickle format
    for tokenizer_file in tiny_classifier_dir.glob("*.json"):
        if tokenizer_file.name != "config.json":
            (legacy / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    (legacy / "vocab.txt").write_bytes((tiny_classifier_dir / "vocab.txt").read_bytes())
    assert (legacy / "pytorch_model.bin").exists()
    manifest = import_hf_folder(ModelStore(store_root), legacy, "legacy")
    assert "model.safetensors" in manifest.files and not any(f.endswith(".bin") for f in manifest.files)


def test_bare_encoder_without_head_is_refused(store_root, tiny_classifier_dir, tmp_path):
    from transformers import BertModel

    encoder = tmp_path / "encoder"
    BertModel.from_pretrained(tiny_classifier_dir).save_pretrained(encoder)
    with pytest.raises(StoreError, match="task"):
        import_hf_folder(ModelStore(store_root), encoder, "bare")
    with pytest.raises(StoreError, match="no trained classification head"):
        import_hf_folder(ModelStore(store_root), encoder, "bare", task="classification")
    assert ModelStore(store_root).models() == []


def test_concurrent_publishes_get_distinct_complete_versions(store_root, tiny_classifier_dir):
    with ProcessPoolExecutor(4) as pool:
        versions = list(pool.map(_publish, [str(store_root)] * 8, [str(tiny_classifier_dir)] * 8))
    store = ModelStore(store_root)
    assert sorted(versions, key=int) == [str(v) for v in range(1, 9)]
    assert store.versions("m") == sorted(versions, key=int)
    for version in store.versions("m"):
        verify_version(store, "m", version)
    assert not [p for p in (store_root / "m").iterdir() if p.name.startswith(".publish-")]


def test_crash_before_rename_leaves_no_version(store_root, tiny_classifier_dir):
    """A publisher killed mid-copy leaves only a hidden staging folder, which readers ignore."""
    script = (
        "import os, shutil, sys\n"
        "from bertserve.store.layout import ModelStore\n"
        "from bertserve.store import publish\n"
        "def die(*a, **k):\n    os._exit(9)\n"
        "publish.write_atomic = die\n"
        f"publish.publish_version(ModelStore({str(store_root)!r}), 'm', {str(tiny_classifier_dir)!r},"
        " {'task': 'classification'}, created_by='t')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    assert result.returncode == 9
    store = ModelStore(store_root)
    assert store.versions("m") == []
    with pytest.raises(UnknownModelError):
        resolve(store, "m")
    assert _publish(str(store_root), str(tiny_classifier_dir)) == "1"


def test_tampered_missing_and_extra_files_are_named(store_root, tiny_classifier_dir):
    store = ModelStore(store_root)
    for _ in range(3):
        import_hf_folder(store, tiny_classifier_dir, "s")
    weights = store.version_dir("s", "1") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors does not match its sha256"):
        verify_version(store, "s", "1")
    (store.version_dir("s", "2") / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match=r"tokenizer\.json is missing"):
        verify_version(store, "s", "2")
    (store.version_dir("s", "3") / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"pytorch_model\.bin is not in the manifest"):
        verify_version(store, "s", "3")


def test_refs_aliases_rollback_and_history(store_root, tiny_classifier_dir):
    store = ModelStore(store_root)
    for _ in range(3):
        import_hf_folder(store, tiny_classifier_dir, "s")
    assert resolve(store, "s") == ("s", "3")  # no production alias: latest
    set_alias(store, "s", "production", "1")
    set_alias(store, "s", "production", "2")
    set_alias(store, "s", "staging", "3")
    assert resolve(store, "s") == ("s", "2") and resolve(store, "s:staging") == ("s", "3")
    assert resolve(store, "s@1") == ("s", "1")
    assert json.loads((store_root / "s" / "aliases.json").read_text()) == {"production": "2", "staging": "3"}
    assert rollback(store, "s") == ("2", "1") and resolve(store, "s") == ("s", "1")
    with pytest.raises(StoreError, match="no earlier version"):
        rollback(store, "s")
    for bad in ("s@9", "s:canary", "nope"):
        with pytest.raises(UnknownModelError):
            resolve(store, bad)
    for malformed in ("s@", "s@x", "a b", "s:@1", ""):
        with pytest.raises(ValueError, match="malformed"):
            parse_ref(malformed)
    with pytest.raises(UnknownModelError):
        set_alias(store, "s", "production", "7")


def test_promotion_gate(store_root, tiny_classifier_dir):
    store = ModelStore(store_root)
    for f1 in (0.6, 0.5, 0.7):
        publish_version(
            store, "s", tiny_classifier_dir, {"task": "classification", "metrics": {"macro_f1": f1}}, "t"
        )
    promote(store, "s", "1")
    with pytest.raises(PromotionRefused, match="worse"):
        promote(store, "s", "2")
    assert store.aliases("s") == {"production": "1"}
    promote(store, "s", "3")
    promote(store, "s", "2", force=True)
    assert store.aliases("s") == {"production": "2"} and store.alias_history("s")["production"] == [
        "1",
        "3",
        "2",
    ]


def test_store_cli(store_root, tiny_classifier_dir, tiny_mlm_dir):
    def cli(*args: str, ok: bool = True) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "bertserve.cli", "store", *args, "--store", str(store_root)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        assert (run.returncode == 0) == ok, run.stdout + run.stderr
        return run.stdout + run.stderr

    assert "published s@1" in cli("import", str(tiny_classifier_dir), "--name", "s")
    assert "published s@2" in cli("import", str(tiny_classifier_dir), "--name", "s", "--alias", "production")
    assert "published mlm@1 (fill-mask" in cli("import", str(tiny_mlm_dir), "--name", "mlm")
    listing = cli("list")
    assert "s@2\tclassification" in listing and "production" in listing and "mlm@1\tfill-mask" in listing
    assert json.loads(cli("show", "s:production"))["version"] == "2"
    assert "s:production -> 1" in cli("alias", "s", "production", "1")
    assert "s:production 1 -> 2" in cli("rollback", "s")
    assert cli("verify").count("ok") == 3
    (store_root / "s" / "1" / "config.json").write_text("{}")
    assert "config.json" in cli("verify", ok=False)
    assert "unknown model" in cli("show", "ghost", ok=False)
