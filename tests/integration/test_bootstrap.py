"""The real bootstrap path (PyPI downloads, sha256 checks, training, publishing, promotion) on a small budget.

`bootstrap(..., budget="quick")` trains on a few dozen reviews for a step or two: the numbers are not
the point here, the path is. The full budget's numbers are in docs/models-and-training.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

from bertserve.store.layout import ModelStore
from bertserve.store.resolve import resolve
from bertserve.training.bootstrap import bootstrap

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built_store(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """One quick bootstrap shared by the tests here (the HTTP tests can reuse it the same way)."""
    root = tmp_path_factory.mktemp("bootstrap") / "model_store"
    lines: list[str] = []
    return root, bootstrap(root, budget="quick", progress=False, log=lines.append), lines


def test_bootstrap_builds_the_default_models(built_store):
    root, _, _ = built_store
    store = ModelStore(root)
    assert store.versions("sentiment") == ["1", "2"] and store.versions("mlm") == ["1"]
    first, second = (store.read_manifest("sentiment", v) for v in ("1", "2"))
    assert (first.encoder, second.encoder) == ("frozen", "fine-tuned")
    for manifest in (first, second):
        assert manifest.labels == ["negative", "neutral", "positive"]
        assert {"accuracy", "macro_f1", "per_class", "holdout"} <= set(manifest.metrics)
        data = manifest.training["data"]
        assert data["train"]["sha256"] and data["test"]["sha256"] != data["train"]["sha256"]
        assert "never read by training" in manifest.training["data_use"]["test"]
        assert "holdout.json" in manifest.files
        holdout = manifest.metrics["holdout"]
        assert holdout["rows"] + holdout["rows_seen_in_training"] == 60  # the quick budget's cap
    assert first.training["data_use"]["eval"].startswith("checkpoint selection (best macro_f1)")
    mlm = store.read_manifest("mlm", "1")
    assert mlm.task == "fill-mask" and {"top1", "top5"} <= set(mlm.metrics)
    embedding = store.read_manifest("minilm", "1")
    assert (embedding.task, embedding.pooling, embedding.normalize, embedding.max_length) == (
        "embedding",
        "mean",
        True,
        256,
    )
    assert store.versions("minilm") == ["1"] and "1_Pooling/config.json" in embedding.files


def test_the_embedding_model_is_published_before_any_training(built_store):
    """So an interrupted bootstrap, or a store built before embedding models, serves /v1/embeddings."""
    _, _, lines = built_store
    published = next(i for i, line in enumerate(lines) if "published minilm@1" in line)
    assert published < next(i for i, line in enumerate(lines) if "training sentiment" in line)


def test_production_is_what_the_gate_allows(built_store):
    """Quick training's scores vary by CPU; whatever they are, `production` must follow the gate's rules."""
    root, summary, lines = built_store
    store = ModelStore(root)
    below = {v: store.read_manifest("sentiment", v).metrics["holdout"]["below_baseline"] for v in ("1", "2")}
    production = store.aliases("sentiment").get("production")
    if all(below.values()):
        assert production is None and any("WARNING: no sentiment version passed the gate" in x for x in lines)
    else:
        assert production is not None and not below[production]
    assert summary["sentiment"]["aliases"].get("production") == production
    for version in ("1", "2"):
        verdicts = [x for x in lines if f"gate refused sentiment@{version}:" in x or f"-> {version}:" in x]
        assert len(verdicts) == 1, lines
        assert f"sentiment@{version} holdout accuracy" in verdicts[0] and "majority baseline" in verdicts[0]


def test_published_versions_load(built_store):
    root, _, _ = built_store
    store = ModelStore(root)
    classifier = AutoModelForSequenceClassification.from_pretrained(store.version_dir("sentiment", "2"))
    assert classifier.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    masked_lm = AutoModelForMaskedLM.from_pretrained(store.version_dir("mlm", "1"))
    assert masked_lm.get_output_embeddings().weight is masked_lm.get_input_embeddings().weight


def test_second_run_is_a_no_op(built_store):
    root, summary, _ = built_store
    again = bootstrap(root, budget="quick", progress=False)
    assert {k: v for k, v in again.items() if k != "seconds"} == {
        k: v for k, v in summary.items() if k != "seconds"
    }
    assert again["seconds"] < 30


def test_served_defaults_answer_over_http(built_store):
    """The bootstrapped store served as `make serve` serves it: defaults need no `model` field."""
    import httpx

    from tests.server_process import running_server

    root, _, _ = built_store
    store = ModelStore(root)
    with running_server(root) as base_url:
        classified = httpx.post(f"{base_url}/v1/classify", json={"inputs": ["It worked, no side effects."]})
        assert classified.status_code == 200, classified.text
        body = classified.json()
        assert (body["model"], body["version"]) == resolve(store, "sentiment")
        listed = httpx.get(f"{base_url}/v1/models").json()["models"]
        sentiment = next(model for model in listed if model["name"] == "sentiment")
        for info in sentiment["versions"]:
            holdout = store.read_manifest("sentiment", info["version"]).metrics["holdout"]
            assert info["below_baseline"] is holdout["below_baseline"]
            assert info["metrics"]["holdout"]["majority_baseline"] == holdout["majority_baseline"]
        assert {s["label"] for s in body["predictions"][0]} == {"negative", "neutral", "positive"}
        filled = httpx.post(f"{base_url}/v1/fill-mask", json={"inputs": ["I took the [MASK] for my pain."]})
        assert filled.status_code == 200, filled.text
        assert filled.json()["model"] == "mlm" and len(filled.json()["predictions"][0][0]) == 5
        embedded = httpx.post(f"{base_url}/v1/embed", json={"inputs": ["I took the pill for my pain."]})
        assert embedded.status_code == 200, embedded.text
        assert embedded.headers["x-model-version"] == "minilm@1" and len(embedded.json()[0]) == 384
