"""`bertserve train` on tiny random checkpoints: the published version loads, serves and says what it is."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from bertserve.store.layout import ModelStore
from bertserve.training.classify import ClassifyOptions
from bertserve.training.data import load_examples, sha256_file, stratified_split
from bertserve.training.jobs import Columns, train_job
from bertserve.training.loop import WeightAverage
from tests.tiny_models import build_classifier

GOOD, BAD, MEH = (
    ("good", "great", "love", "helped"),
    ("bad", "awful", "hate", "pain"),
    ("okay", "fine", "day"),
)
FILLER = ["the", "pill", "i", "took", "this", "week", "was", "for", "my", "headache"]


def _review(rng: random.Random, words: tuple[str, ...]) -> str:
    return " ".join([*rng.sample(FILLER, 4), rng.choice(words), *rng.sample(FILLER, 3)])


def _rows(count: int = 48, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    classes = (("positive", GOOD), ("negative", BAD), ("neutral", MEH))
    return [
        {"text": _review(rng, words), "other": rng.choice(FILLER), "label": label}
        for i in range(count)
        for label, words in [classes[i % 3]]
    ]


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ","
        )
        writer.writeheader()
        writer.writerows(rows)
    return path


def _options(encoder: str, **overrides) -> ClassifyOptions:
    params = dict(encoder=encoder, epochs=2, batch_size=8, max_length=32, bf16=False, threads=2, seed=1)
    params.update(overrides)
    return ClassifyOptions(**params)


@pytest.fixture()
def reviews_csv(tmp_path) -> Path:
    return _write(tmp_path / "reviews.csv", _rows())


def _train_toy(store_root: Path, base: Path, data: Path, options: ClassifyOptions, **job) -> tuple:
    """Train and publish `toy` from `base`; returns the manifest and the published version folder."""
    manifest = train_job(store_root, "toy", str(base), data, Columns(), options, progress=False, **job)
    return manifest, Path(ModelStore(store_root).version_dir("toy", manifest.version))


def _logits(folder: Path, text: str, pair: str | None = None) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        return model(**tokenizer(text, pair, return_tensors="pt")).logits


def test_fine_tune_publishes_a_version_that_loads_and_reports(
    store_root, tiny_classifier_dir, reviews_csv, tmp_path
):
    test_rows = _rows(12, seed=5) + _rows()[:3]  # 3 reviews that training also reads
    test_file = _write(tmp_path / "test.csv", test_rows)
    manifest, folder = _train_toy(
        store_root, tiny_classifier_dir, reviews_csv, _options("fine-tune"), test_file=test_file
    )
    saved = ModelStore(store_root).read_manifest("toy", manifest.version)
    assert saved.task == "classification" and saved.problem_type == "single_label"
    assert saved.labels == ["negative", "neutral", "positive"]
    assert saved.encoder == "fine-tuned" and saved.max_length == 32
    assert saved.base_model == str(tiny_classifier_dir.resolve())
    training = saved.training
    assert training["data"]["train"]["sha256"] == sha256_file(reviews_csv)
    assert training["data"]["test"]["sha256"] == sha256_file(test_file)
    assert training["split_sizes"] == {"train": 42, "eval": 6, "test": 15}  # 15% of each class of 16
    assert training["hyperparameters"]["learning_rate"] == 1e-4 and training["duration_s"] >= 0
    assert {"accuracy", "macro_f1", "per_class"} <= set(saved.metrics)
    assert set(saved.metrics["per_class"]) == set(saved.labels)
    assert {"precision", "recall", "f1", "support"} <= set(saved.metrics["per_class"]["neutral"])
    assert training["data_use"]["eval"] == "reported only (the last weights are kept)"
    assert "never read by training" in training["data_use"]["test"]
    holdout = saved.metrics["holdout"]
    recorded = json.loads((folder / "holdout.json").read_text())
    assert "holdout.json" in saved.files and recorded["sha256"] == holdout["sha256"]
    assert recorded["truth"] == [[row["label"]] for row in test_rows] and recorded["seen"] == [12, 13, 14]
    assert (holdout["rows"], holdout["rows_seen_in_training"]) == (12, 3) and 0 <= holdout["accuracy"] <= 1
    assert holdout["majority_baseline"]["accuracy"] == round(4 / 12, 4)  # 4 rows of each class
    assert (folder / "confusion_matrix.png").stat().st_size > 1000
    assert (folder / "training_curve.png").stat().st_size > 1000
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(3)] == saved.labels
    assert model.config.problem_type == "single_label_classification"
    assert _logits(folder, "the pill helped").shape == (1, 3)


CLASS_WORDS = {
    "positive": ("good", "great", "love", "helped", "excellent", "happy", "like", "works"),
    "negative": ("bad", "awful", "hate", "pain", "terrible", "sad", "angry", "dislike"),
    "neutral": ("okay", "fine", "day", "calm", "week", "time", "tea", "water"),
}


def _learnable_rows(count: int, seed: int) -> list[dict]:
    """Three words of one class's eight per review: every word tells the class, and few reviews repeat."""
    rng = random.Random(seed)
    labels = sorted(CLASS_WORDS)
    return [
        {"text": " ".join(rng.sample(CLASS_WORDS[labels[i % 3]], 3)), "label": labels[i % 3]}
        for i in range(count)
    ]


@pytest.mark.parametrize(("encoder", "learning_rate"), [("fine-tune", 1e-3), ("frozen", 2e-2)])
def test_training_beats_the_majority_class_on_a_learnable_task(store_root, tmp_path, encoder, learning_rate):
    """On held-out reviews (those also in the training data left out) the trained model beats always
    answering the majority class by at least 0.3 accuracy."""
    base = build_classifier(tmp_path / "base", initializer_range=0.1)
    train = _write(tmp_path / "train.csv", _learnable_rows(96, seed=0))
    test = _write(tmp_path / "test.csv", _learnable_rows(30, seed=7))
    options = _options(encoder, epochs=None, batch_size=16, learning_rate=learning_rate)
    manifest, _ = _train_toy(store_root, base, train, options, test_file=test)
    holdout = manifest.metrics["holdout"]
    assert holdout["rows"] >= 20, "enough unseen reviews for the margin to mean something"
    assert holdout["accuracy"] >= holdout["majority_baseline"]["accuracy"] + 0.3, holdout


def test_frozen_encoder_is_bit_identical_and_head_trains(store_root, tiny_classifier_dir, reviews_csv):
    manifest, folder = _train_toy(store_root, tiny_classifier_dir, reviews_csv, _options("frozen", epochs=5))
    assert manifest.encoder == "frozen"
    base = load_file(tiny_classifier_dir / "model.safetensors")
    trained = load_file(folder / "model.safetensors")
    encoder = [k for k in base if k.startswith(("bert.embeddings.", "bert.encoder."))]
    assert len(encoder) > 10
    assert all(torch.equal(base[k], trained[k]) for k in encoder), "frozen encoder tensors changed"
    assert not torch.equal(base["classifier.weight"], trained["classifier.weight"]), "the head did not train"


@pytest.mark.parametrize("encoder", ["fine-tune", "frozen"])
def test_ordinal_head_is_one_score_axis_saved_as_a_plain_classifier(
    store_root, tiny_classifier_dir, reviews_csv, encoder
):
    order = ["positive", "neutral", "negative"]  # not the alphabetical order: the given one must win
    manifest, folder = _train_toy(
        store_root, tiny_classifier_dir, reviews_csv, _options(encoder, ordinal=order)
    )
    assert manifest.labels == order and manifest.training["hyperparameters"]["ordinal"] == order
    saved = load_file(folder / "model.safetensors")
    assert not [k for k in saved if "parametrizations" in k]
    rows = saved["classifier.weight"]
    assert torch.equal(rows[0], torch.zeros_like(rows[0])) and torch.equal(rows[2], 2 * rows[1])
    assert rows[1].abs().sum() > 0, "the score direction did not train"
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert [model.config.id2label[i] for i in range(3)] == order
    assert _logits(folder, "the pill helped").shape == (1, 3)


@pytest.mark.parametrize("select_on", ["macro_f1", "loss", "last"])
def test_the_kept_checkpoint_is_the_one_select_on_names(tiny_classifier_dir, reviews_csv, select_on):
    from bertserve.training.classify import ClassifierTrainer

    train, evaluation = stratified_split(load_examples(reviews_csv, "text", "label"), 0.25, 0)
    options = _options("fine-tune", epochs=4, evals_per_epoch=3, select_on=select_on)
    result = ClassifierTrainer(tiny_classifier_dir, train, evaluation, options).run(progress=False)
    history = result.history
    scores = {
        "macro_f1": history["eval_macro_f1"],
        "loss": [-x for x in history["eval_loss"]],
        "last": history["eval_step"],
    }[select_on]
    # macro-F1 stalls from the 3rd evaluation here: fine-tuning runs every epoch all the same by default
    assert len(scores) == 12 and result.summary["epochs_run"] == 4
    assert result.summary["best_step"] == history["eval_step"][scores.index(max(scores))]
    if select_on == "last":
        assert result.summary["best_step"] == result.summary["steps"] == history["step"][-1]
    fine_tune, frozen = _options("fine-tune").resolved(), _options("frozen").resolved()
    assert (fine_tune.patience, fine_tune.select_on) == (0, "last")
    assert (frozen.patience, frozen.select_on) == (6, "macro_f1")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ordinal", "negative,positive"], "does not place the labels ['neutral']"),
        (["--ordinal", "negative,neutral,positive", "--multi-label"], "needs single-label data"),
        (["--ordinal", "negative,negative"], "distinct labels"),
        (["--label-column", "stars"], "no column 'stars'"),
        (["--device", "tpu"], "'tpu' is not auto, cpu, cuda"),
        (["--device", "cuda:7"], "device cuda:7: "),  # no such GPU here, whatever the machine
    ],
)
def test_cli_refuses_bad_input_in_one_line(store_root, tiny_classifier_dir, reviews_csv, extra, message):
    from bertserve.cli import app

    args = ["train", str(reviews_csv), "--name", "cli", "--base", str(tiny_classifier_dir)]
    result = CliRunner().invoke(app, [*args, "--store", str(store_root), "--no-progress", *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert "cli" not in ModelStore(store_root).models()


def test_weight_average_tracks_the_trainable_weights_and_gives_the_model_back():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)  # frozen: not averaged
    average = WeightAverage(model, decay=0.5)
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    average.update()  # ramped decay min(0.5, 2/11): the average moves 9/11 of the way
    expected = start + 9 / 11
    assert torch.allclose(average.average[0], expected)
    with average.applied():
        assert torch.allclose(model[1].weight, expected)
    assert torch.allclose(model[1].weight, start + 1.0), "the model's own weights come back"
    assert len(average.params) == 2  # the trainable Linear's weight and bias only


def test_frozen_training_with_weight_average_keeps_the_encoder_bit_identical(
    store_root, tiny_classifier_dir, reviews_csv
):
    options = _options("frozen", epochs=4, ema_decay=0.9)
    manifest = train_job(
        store_root, "toy", str(tiny_classifier_dir), reviews_csv, Columns(), options, progress=False
    )
    assert manifest.training["hyperparameters"]["ema_decay"] == 0.9
    base = load_file(tiny_classifier_dir / "model.safetensors")
    folder = Path(ModelStore(store_root).version_dir("toy", manifest.version))
    trained = load_file(folder / "model.safetensors")
    encoder = [k for k in base if k.startswith(("bert.embeddings.", "bert.encoder."))]
    assert all(torch.equal(base[k], trained[k]) for k in encoder), "frozen encoder tensors changed"
    assert not torch.equal(base["classifier.weight"], trained["classifier.weight"]), "the head did not train"


def test_compare_recipes_scores_every_row_once_per_recipe_and_seed(tiny_classifier_dir, tmp_path):
    data = _write(tmp_path / "labelled.csv", _rows(30))
    tiny = {"epochs": 1, "batch_size": 8, "max_length": 32, "bf16": False, "threads": 1}
    output = tmp_path / "recipes.json"
    command = [sys.executable, str(Path(__file__).parents[2] / "scripts" / "compare_recipes.py")]
    command += ["--base", str(tiny_classifier_dir), "--data", str(data), "--text-column", "text"]
    command += ["--label-column", "label", "--folds", "3", "--train-seeds", "1,2", "--output", str(output)]
    command += ["--train-fraction", "0.5"]
    averaged = json.dumps({**tiny, "ema_decay": 0.9})
    command += ["--recipe", f"plain={json.dumps(tiny)}", "--recipe", f"ema={averaged}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["rows"] == 30 and set(report["recipes"]) == {"plain", "ema"}
    assert report["train_fraction"] == 0.5
    for recipe in report["recipes"].values():
        assert [run["seed"] for run in recipe["runs"]] == [1, 2]
        for one in recipe["runs"]:
            assert len(one["folds"]) == 3
            # 20 rows outside each fold, 3 to inner validation; of the 17 left, each class's half (rounded)
            assert [fold["trained_on"] for fold in one["folds"]] == [8, 8, 8]
            pooled = one["pooled"]
            assert pooled["n"] == 30, "the folds partition the data: every row is held out exactly once"
            assert sum(c["support"] for c in pooled["per_class"].values()) == 30
        accuracies = [one["pooled"]["accuracy"] for one in recipe["runs"]]
        summary = recipe["summary"]["accuracy"]
        assert summary["min"] == min(accuracies) and summary["max"] == max(accuracies)
        assert summary["mean"] == pytest.approx(sum(accuracies) / 2, abs=1e-4)
    assert "[recipes] plain seed 2 fold 3/3" in run.stdout


def test_pairs_from_tsv_and_seeded_runs_give_bit_identical_weights(store_root, tiny_classifier_dir, tmp_path):
    data = _write(tmp_path / "pairs.tsv", _rows(24))
    columns = Columns(text="text", pair="other", label="label")
    first = train_job(
        store_root,
        "pairs",
        str(tiny_classifier_dir),
        data,
        columns,
        _options("fine-tune", epochs=1, bf16=True),  # bf16 where the CPU has it, as the bootstrap trains
        progress=False,
    )
    second = train_job(
        store_root,
        "pairs",
        str(tiny_classifier_dir),
        data,
        columns,
        _options("fine-tune", epochs=1, bf16=True),
        progress=False,
    )
    store = ModelStore(store_root)
    folders = [Path(store.version_dir("pairs", m.version)) for m in (first, second)]
    weights = [load_file(folder / "model.safetensors") for folder in folders]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0]), "not bit-identical"
    assert first.metrics["macro_f1"] == second.metrics["macro_f1"]


def test_multi_label_from_jsonl_lists(store_root, tiny_multilabel_dir, tmp_path):
    rng = random.Random(3)
    names = ("nausea", "pain", "sleep")
    rows = []
    for i in range(40):
        labels = [name for j, name in enumerate(names) if (i >> j) & 1] or ["pain"]
        rows.append({"text": " ".join(labels + rng.sample(FILLER, 4)), "label": labels})
    data = _write(tmp_path / "multi.jsonl", rows)
    manifest = train_job(
        store_root,
        "symptoms",
        str(tiny_multilabel_dir),
        data,
        Columns(multi_label=True),
        _options("fine-tune", epochs=1),
        progress=False,
    )
    assert manifest.problem_type == "multi_label"
    assert manifest.labels == sorted(names)
    assert {"micro_f1", "macro_f1", "per_class"} <= set(manifest.metrics)
    folder = Path(ModelStore(store_root).version_dir("symptoms", manifest.version))
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.problem_type == "multi_label_classification"
    assert _logits(folder, "pain and sleep").shape == (1, 3)


def test_multi_label_cells_split_on_delimiter(tmp_path):
    data = _write(
        tmp_path / "cells.csv", [{"text": "a b", "label": "pain|sleep"}, {"text": "c", "label": "sleep"}]
    )
    examples = load_examples(data, "text", "label", multi_label=True)
    assert examples.labels == [["pain", "sleep"], ["sleep"]]


def test_ctrl_c_publishes_nothing(store_root, tiny_classifier_dir, reviews_csv):
    def interrupt(step: int, loss: float) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_job(
            store_root,
            "toy",
            str(tiny_classifier_dir),
            reviews_csv,
            Columns(),
            _options("fine-tune"),
            progress=False,
            callback=interrupt,
        )
    store = ModelStore(store_root)
    assert "toy" not in store.models() or store.versions("toy") == []
    assert not [p for p in store_root.rglob("*") if p.is_file()], "files left behind in the store"


def test_base_from_store_ref(store_root, tiny_classifier_dir, reviews_csv):
    first = train_job(
        store_root,
        "toy",
        str(tiny_classifier_dir),
        reviews_csv,
        Columns(),
        _options("frozen", epochs=1),
        progress=False,
    )
    second = train_job(
        store_root,
        "toy",
        f"toy@{first.version}",
        reviews_csv,
        Columns(),
        _options("frozen", epochs=1),
        progress=False,
    )
    assert second.base_model == f"toy@{first.version}"
    assert ModelStore(store_root).versions("toy") == [first.version, second.version]


def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path):
    examples = load_examples(_write(tmp_path / "d.csv", _rows(30)), "text", "label")
    a_train, a_eval = stratified_split(examples, 0.2, seed=7)
    _, b_eval = stratified_split(examples, 0.2, seed=7)
    assert a_eval.texts == b_eval.texts and len(a_train) + len(a_eval) == 30
    assert {ls[0] for ls in a_eval.labels} == {"negative", "neutral", "positive"}


def test_cli_commands_have_help():
    from bertserve.cli import app

    runner = CliRunner()
    for command in ("train", "pretrain", "bootstrap"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--store" in result.output


def test_cli_train(store_root, tiny_classifier_dir, reviews_csv):
    from bertserve.cli import app

    args = [
        "train",
        str(reviews_csv),
        "--name",
        "cli",
        "--base",
        str(tiny_classifier_dir),
        "--store",
        str(store_root),
        "--encoder",
        "frozen",
        "--epochs",
        "2",
        "--max-length",
        "32",
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "published cli@" in result.output and "macro_f1=" in result.output
    manifest = ModelStore(store_root).read_manifest("cli", ModelStore(store_root).versions("cli")[-1])
    assert manifest.training["device"] == "cpu"


def test_training_picks_its_device_by_serves_rule(monkeypatch):
    """auto trains on the GPU when torch sees one (make serve on a GPU machine), else on the CPU."""
    from bertserve.training import bootstrap
    from bertserve.training.loop import training_device

    assert training_device("auto", lambda: (2, "")) == "cuda:0"
    assert training_device("auto", lambda: (0, "no driver")) == "cpu"
    assert training_device("cuda:1", lambda: (2, "")) == "cuda:1"
    assert training_device("cpu", lambda: (2, "")) == "cpu"
    monkeypatch.setattr(bootstrap, "native_bf16", lambda: False)
    full = bootstrap.BUDGETS["full"]
    assert bootstrap._on(full, "cpu").pretrain.max_steps == 120  # a slow CPU keeps the bootstrap's time
    on_gpu = bootstrap._on(full, "cuda:0")
    assert on_gpu.pretrain.max_steps == 300
    assert {on_gpu.frozen.device, on_gpu.fine_tune.device, on_gpu.pretrain.device} == {"cuda:0"}


def test_cli_fine_tune_with_frozen_word_embeddings_and_label_smoothing(
    store_root, tiny_classifier_dir, reviews_csv
):
    """--freeze-embeddings keeps the word embeddings bit-identical while the layers above them train;
    both options reach the manifest."""
    from bertserve.cli import app

    args = ["train", str(reviews_csv), "--name", "cli", "--base", str(tiny_classifier_dir)]
    args += ["--store", str(store_root), "--epochs", "2", "--max-length", "32", "--no-bf16"]
    args += ["--freeze-embeddings", "--label-smoothing", "0.1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    store = ModelStore(store_root)
    hyperparameters = store.read_manifest("cli", 1).training["hyperparameters"]
    assert hyperparameters["train_embeddings"] is False and hyperparameters["label_smoothing"] == 0.1
    base = load_file(tiny_classifier_dir / "model.safetensors")
    trained = load_file(Path(store.version_dir("cli", 1)) / "model.safetensors")
    words = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(base[words], trained[words]), "frozen word embeddings changed"
    layers = [k for k in base if k.startswith("bert.encoder.") and k.endswith("weight")]
    assert any(not torch.equal(base[k], trained[k]) for k in layers), "the encoder did not train"
