"""What a fresh clone serves as `sentiment`: the full-budget bootstrap's production version must beat
always answering the most frequent label on drugsComTest, a holdout that its training never read."""

from __future__ import annotations

import json

import httpx
import pytest

from bertserve.store.gate import HOLDOUT_FILE, holdout_sha256
from bertserve.store.layout import ModelStore
from bertserve.store.resolve import resolve
from bertserve.training import assets
from bertserve.training.data import load_examples, sha256_file
from tests.server_process import running_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def production(default_store) -> tuple[ModelStore, str]:
    store = ModelStore(default_store)
    assert "production" in store.aliases("sentiment"), "the bootstrap's gate set no production version"
    return store, resolve(store, "sentiment")[1]


def test_default_sentiment_beats_the_majority_baseline_on_the_holdout(production):
    store, version = production
    holdout = store.read_manifest("sentiment", version).metrics["holdout"]
    assert not holdout["below_baseline"]
    assert holdout["accuracy"] > holdout["majority_baseline"]["accuracy"], holdout
    others = [v for v in store.versions("sentiment") if v != version]
    for other in others:  # and it is the better sentiment version on the same rows
        scores = store.read_manifest("sentiment", other).metrics["holdout"]
        assert scores["sha256"] == holdout["sha256"]
        assert holdout["macro_f1"] >= scores["macro_f1"], (version, holdout, other, scores)


def test_the_holdout_is_drugs_com_test_and_its_scored_rows_were_never_trained_on(production):
    store, version = production
    manifest = store.read_manifest("sentiment", version)
    reviews = assets.fetch(assets.REVIEWS)
    train_file, test_file = reviews / "drugsComTrain.tsv", reviews / "drugsComTest.tsv"
    data = manifest.training["data"]
    assert (data["train"]["sha256"], data["test"]["sha256"]) == (
        sha256_file(train_file),
        sha256_file(test_file),
    )
    assert data["eval"]["split_of"] == "train"  # selection read only a split of the training file
    test = load_examples(test_file, "review", "rating")
    recorded = json.loads((store.version_dir("sentiment", version) / HOLDOUT_FILE).read_text())
    assert (
        recorded["sha256"]
        == holdout_sha256(test.texts, None, test.labels)
        == manifest.metrics["holdout"]["sha256"]
    )
    trained_on = set(load_examples(train_file, "review", "rating").texts)
    seen = {row for row, text in enumerate(test.texts) if text in trained_on}
    assert set(recorded["seen"]) == seen  # the gate leaves exactly these rows out
    assert manifest.metrics["holdout"]["rows"] == len(test) - len(seen)


def test_models_endpoint_shows_the_holdout_and_baseline(production):
    store, version = production
    with running_server(store.root) as base_url:
        listed = httpx.get(f"{base_url}/v1/models").json()["models"]
    sentiment = next(model for model in listed if model["name"] == "sentiment")
    assert sentiment["default_version"] == version
    served = next(info for info in sentiment["versions"] if info["version"] == version)
    assert served["below_baseline"] is False
    assert (
        served["metrics"]["holdout"]["rows"]
        == store.read_manifest("sentiment", version).metrics["holdout"]["rows"]
    )
