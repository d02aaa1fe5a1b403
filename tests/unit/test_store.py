"""The store contract of model-store.md: atomic numbered publish, hashes, aliases, rollback, gate, import."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from bertserve.store.errors import IntegrityError, PromotionRefused, StoreError, UnknownModelError
from bertserve.store.gate import HOLDOUT_FILE, Holdout, holdout_sha256
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

WEIGHTS = "model.safetensors"


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
    assert_same_weights(load_file(folder / "model.safetensors"), load_file(tiny_classifier_dir / WEIGHTS))


def assert_same_weights(stored: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
    assert stored.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(stored[key], tensor), key


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
    converted = ModelStore(store_root).version_dir("legacy", manifest.version) / WEIGHTS
    assert_same_weights(load_file(converted), load_file(tiny_classifier_dir / WEIGHTS))


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


def test_a_failed_first_publish_leaves_no_model_folder(store_root, tiny_classifier_dir, tmp_path):
    """A folder with no version in it is a model with no version: a publish that fails must not leave one."""
    source = tmp_path / "broken-checkout"
    shutil.copytree(tiny_classifier_dir, source)
    (source / "added.txt").symlink_to(tmp_path / "gone")  # copying it fails, after the model folder exists
    store = ModelStore(store_root)
    with pytest.raises(shutil.Error):
        publish_version(store, "m", source, {"task": "classification"}, created_by="test")
    assert list(store_root.iterdir()) == []
    _publish(str(store_root), str(tiny_classifier_dir))
    with pytest.raises(shutil.Error):  # a later version's failure keeps the model and its versions
        publish_version(store, "m", source, {"task": "classification"}, created_by="test")
    assert store.versions("m") == ["1"] and not list(store.model_dir("m").glob(".publish-*"))


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


HOLDOUT_LABELS = ["negative", "neutral", "positive"]


def _truth(rows: int = 300) -> list[tuple[str, ...]]:
    """60% positive, 30% negative, 10% neutral: always answering 'positive' scores accuracy 0.6."""
    return [
        ("positive",) if i % 10 < 6 else ("negative",) if i % 10 < 9 else ("neutral",) for i in range(rows)
    ]


def _predictions(truth: list[tuple[str, ...]], wrong_every: int, seed: int) -> list[tuple[str, ...]]:
    """Right on every row except about one in `wrong_every` (which rows depends on `seed`)."""
    rng = random.Random(seed)
    out = []
    for label_set in truth:
        if rng.randrange(wrong_every) == 0:
            label_set = (rng.choice([label for label in HOLDOUT_LABELS if label not in label_set]),)
        out.append(label_set)
    return out


def _publish_scored(
    store: ModelStore, source: Path, tmp_path: Path, predicted: list, truth: list | None = None, seen=()
) -> str:
    """A version with recorded holdout predictions, as `bertserve train --test-file` publishes one."""
    truth = truth or _truth()
    texts = [f"review {i}" for i in range(len(truth))]
    holdout = Holdout(holdout_sha256(texts, None, truth), truth, predicted, frozenset(seen))
    folder = tmp_path / f"candidate-{len(store.versions('s'))}"
    shutil.copytree(source, folder)
    (folder / HOLDOUT_FILE).write_text(json.dumps(holdout.to_json()))
    fields = {"task": "classification", "labels": HOLDOUT_LABELS, "metrics": {"holdout": holdout.summary()}}
    return publish_version(store, "s", folder, fields, "test").version


def test_holdout_scores_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    truth = _truth(200)
    predicted = _predictions(truth, 3, seed=1)
    summary = Holdout("x", truth, predicted, frozenset()).summary()
    assert summary["accuracy"] == round(accuracy_score(truth, predicted), 4)
    assert summary["macro_f1"] == round(f1_score(truth, predicted, average="macro"), 4)
    assert summary["majority_baseline"] == {"label": "positive", "accuracy": 0.6, "macro_f1": 0.25}
    assert summary["rows"] == 200 and not summary["below_baseline"]
    seen = Holdout("x", truth, predicted, frozenset(range(100))).summary()
    assert (seen["rows"], seen["rows_seen_in_training"]) == (100, 100)


def test_gate_passes_a_clear_win_and_says_why(store_root, tiny_classifier_dir, tmp_path):
    store = ModelStore(store_root)
    weak = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 3, seed=1))
    strong = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 10, seed=2))
    first = promote(store, "s", weak)
    assert "on 300 rows" in first and "pointed to no other version" in first
    why = promote(store, "s", strong)
    assert store.aliases("s") == {"production": strong}
    interval = re.search(
        r"macro_f1 (\S+) vs (\S+) on 300 shared holdout rows .*\[([-+.\d]+), ([-+.\d]+)\]", why
    )
    assert interval, why
    candidate, current, low, high = map(float, interval.groups())
    assert candidate > current and 0 < low < candidate - current < high
    assert "2000 resamples" in why and "-0.0100" in why


def test_gate_refuses_a_difference_within_noise(store_root, tiny_classifier_dir, tmp_path):
    store = ModelStore(store_root)
    current = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 5, seed=1))
    candidate = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 5, seed=2))
    promote(store, "s", current)
    with pytest.raises(
        PromotionRefused, match=r"refused: the gate needs the lower bound above -0\.0100"
    ) as refused:
        promote(store, "s", candidate)
    assert "on 300 shared holdout rows" in str(refused.value) and "--force" in str(refused.value)
    assert store.aliases("s") == {"production": current}
    assert "passes" in promote(store, "s", candidate, margin=0.5)  # a wide enough margin accepts it


def test_gate_refuses_rows_read_in_training_and_foreign_holdouts(store_root, tiny_classifier_dir, tmp_path):
    store = ModelStore(store_root)
    current = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 5, seed=1))
    promote(store, "s", current)
    everything = _publish_scored(
        store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 20, seed=2), seen=range(300)
    )
    with pytest.raises(PromotionRefused, match="its training read every one of its 300 holdout rows"):
        promote(store, "s", everything)
    half = _publish_scored(
        store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 20, seed=2), seen=range(150)
    )
    assert "on 150 shared holdout rows (150 excluded: read in training)" in promote(store, "s", half)
    other = _truth(280)
    foreign = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(other, 20, seed=3), other)
    with pytest.raises(PromotionRefused, match="no shared holdout to compare on"):
        promote(store, "s", foreign)
    assert store.aliases("s") == {"production": half}


def test_gate_refuses_below_baseline_and_unscored_versions_unless_forced(
    store_root, tiny_classifier_dir, tmp_path
):
    store = ModelStore(store_root)
    truth = _truth()
    guesses = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(truth, 2, seed=1))
    with pytest.raises(PromotionRefused, match=r"majority baseline \(always 'positive'\) accuracy 0\.6000"):
        promote(store, "s", guesses)  # no current version: the baseline alone decides
    assert store.aliases("s") == {}
    imported = import_hf_folder(store, tiny_classifier_dir, "s").version
    with pytest.raises(PromotionRefused, match="no recorded holdout predictions"):
        promote(store, "s", imported)
    assert promote(store, "s", guesses, force=True).startswith("forced past the gate: ")
    assert ModelStore(store_root).read_manifest("s", guesses).metrics["holdout"]["below_baseline"] is True
    assert store.aliases("s") == {"production": guesses}
    with pytest.raises(ValueError, match="unknown gate metric"):
        promote(store, "s", guesses, metric="loss")


def test_gate_refuses_edited_predictions(store_root, tiny_classifier_dir, tmp_path):
    store = ModelStore(store_root)
    version = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 2, seed=1))
    path = store.version_dir("s", version) / HOLDOUT_FILE
    data = json.loads(path.read_text())
    data["predicted"] = data["truth"]  # a perfect score, written by hand
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match=r"holdout\.json does not match its sha256"):
        promote(store, "s", version)


def test_verify_fails_an_empty_store_and_aliases_to_nothing(store_root, tiny_classifier_dir):
    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "bertserve.cli", "store", "verify", "--store", str(store_root)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parents[2],
        )

    empty = verify()
    assert empty.returncode == 1 and "holds no models: seed it before serving" in empty.stderr
    assert len(empty.stderr.strip().splitlines()) == 1
    store = ModelStore(store_root)
    (store_root / "ghost").mkdir()
    import_hf_folder(store, tiny_classifier_dir, "s")
    set_alias(store, "s", "production", "1")
    aliases = store_root / "s" / "aliases.json"
    aliases.write_text(json.dumps({"production": "1", "staging": "7"}))
    broken = verify()
    assert broken.returncode == 1, broken.stdout
    assert "FAILED  ghost: no published versions" in broken.stdout
    assert "FAILED  s:staging points to version 7, which the store does not have" in broken.stdout
    assert "ok      s@1" in broken.stdout
    (store_root / "ghost").rmdir()
    aliases.write_text(json.dumps({"production": "1"}))
    assert verify().returncode == 0


def _bertserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bertserve.cli", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
    )


def _store_cli(store_root: Path, *args: str, ok: bool = True) -> str:
    run = _bertserve("store", *args, "--store", str(store_root))
    assert (run.returncode == 0) == ok, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_a_damaged_manifest_is_named_and_the_rest_checked(store_root, tiny_classifier_dir):
    store = ModelStore(store_root)
    for _ in range(3):
        import_hf_folder(store, tiny_classifier_dir, "s")
    truncated = store.version_dir("s", "1") / "manifest.json"
    truncated.write_text(truncated.read_text()[:200])
    shutil.copyfile(
        store.version_dir("s", "3") / "manifest.json", store.version_dir("s", "2") / "manifest.json"
    )

    verified = _bertserve("store", "verify", "--store", str(store_root))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    lines = verified.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith(
        "FAILED  s@1: manifest.json is not a valid manifest: Invalid JSON"
    )
    assert lines[1:] == ["FAILED  s@2: manifest.json is the manifest of s@3", "ok      s@3"]
    assert verified.stderr == ""
    listing = _store_cli(store_root, "list").splitlines()
    assert listing[0].startswith("s@1\tFAILED  s@1: manifest.json is not a valid manifest")
    assert listing[2].startswith("s@3\tclassification")
    shown = _bertserve("store", "show", "s@1", "--store", str(store_root))
    assert shown.returncode == 1 and shown.stderr.startswith("error: s@1: manifest.json is not a valid")
    assert len(shown.stderr.splitlines()) == 1


def test_commands_refuse_names_that_are_paths_and_leave_nothing_behind(
    store_root, tiny_classifier_dir, tmp_path
):
    """A name becomes a folder: `../x` would write outside the store. Every command taking a name or a ref
    refuses a bad one in one line with exit 2 before touching anything; an unknown model creates nothing."""
    store = ModelStore(store_root)
    import_hf_folder(store, tiny_classifier_dir, "s")
    data = tmp_path / "train.csv"
    data.write_text("text,label\ngood,positive\nbad,negative\n")

    def tree() -> list[str]:
        return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    before = tree()
    refused = [
        ("store", "alias", "../x", "production", "1"),
        ("store", "alias", "s", "../x", "1"),
        ("store", "rollback", "../x"),
        ("store", "rollback", "s", "../x"),
        ("store", "promote", "../x", "1"),
        ("store", "promote", "s", "1", "--alias", "../x"),
        ("store", "import", str(tiny_classifier_dir), "--name", "../x"),
        ("store", "import", str(tiny_classifier_dir), "--name", "s", "--alias", "../x"),
        ("store", "show", "../x"),
        ("store", "verify", "../x"),
        ("store", "verify", "123"),
        ("train", str(data), "--name", "../x", "--base", "s"),
        ("pretrain", str(data), "--name", "../x", "--base", "s"),
    ]
    for args in refused:
        run = _bertserve(*args, "--store", str(store_root))
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert run.stdout == "" and len(run.stderr.splitlines()) == 1, (args, run.stderr)
        assert re.match(
            r"error: (invalid (model name|alias) '(\.\./x|123)'|malformed model reference)", run.stderr
        )
    for args in (("rollback", "typo"), ("alias", "typo", "production", "1"), ("promote", "typo", "1")):
        run = _bertserve("store", *args, "--store", str(store_root))
        assert run.returncode == 1 and run.stderr.startswith("error: unknown model 'typo'"), (
            args,
            run.stderr,
        )
    assert tree() == before


def test_promote_and_list_show_the_gate_at_the_command_line(store_root, tiny_classifier_dir, tmp_path):
    store = ModelStore(store_root)
    guesses = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 2, seed=1))
    good = _publish_scored(store, tiny_classifier_dir, tmp_path, _predictions(_truth(), 10, seed=2))
    refused = _store_cli(store_root, "promote", "s", guesses, ok=False)
    assert "below the majority baseline (use --force to promote anyway)" in refused
    moved = _store_cli(store_root, "promote", "s", good, "--metric", "accuracy", "--margin", "0.02")
    assert moved.startswith(f"s:production -> {good}: s@{good} holdout accuracy 0.")
    forced = _store_cli(store_root, "promote", "s", guesses, "--force")
    assert f"s:production -> {guesses}: forced past the gate: " in forced and "below the majority" in forced
    listing = _store_cli(store_root, "list").splitlines()
    assert "below-baseline" in listing[0] and "holdout accuracy=0.883 macro_f1=0.834\t" in listing[1]


def test_store_cli(store_root, tiny_classifier_dir, tiny_mlm_dir):
    def cli(*args: str, ok: bool = True) -> str:
        return _store_cli(store_root, *args, ok=ok)

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
