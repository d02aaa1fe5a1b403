"""KServe's way of shipping a model: a plain Hugging Face folder where its storage initializer puts it, and
the runtime started with --model-dir / --model-name on an empty store (no `store import` by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bertserve.store.layout import ModelStore
from tests.server_process import running_server
from tests.tiny_models import build_classifier

TEXTS = ["the pill helped my headache", "awful nausea"]


@pytest.fixture(scope="module")
def mounted(tmp_path_factory):
    base = tmp_path_factory.mktemp("kserve")
    folder = build_classifier(base / "mnt" / "models", seed=7)  # what the storage initializer leaves
    store = base / "model_store"
    store.mkdir()
    args = ("--model-dir", str(folder), "--model-name", "reviews", "--workers", "1")
    with running_server(store, *args) as server:
        yield server, folder, ModelStore(store)


def test_a_mounted_folder_is_published_and_served_as_the_default(mounted):
    import tritonclient.http as httpclient

    server, folder, store = mounted
    assert store.versions("reviews") == ["1"]
    assert store.read_manifest("reviews", "1").training["source"] == str(folder)
    client = httpclient.InferenceServerClient(url=server.removeprefix("http://"))
    assert client.is_model_ready("reviews")
    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    scores = client.infer("reviews", [tensor]).as_numpy("scores")
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        expected = [
            torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0], -1).numpy() for t in TEXTS
        ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    import httpx

    answer = httpx.post(f"{server}/v1/classify", json={"inputs": TEXTS[0]}, timeout=30).json()
    assert answer["model"] == "reviews"  # the default classifier now


def test_a_second_start_on_the_same_mount_publishes_nothing_new(mounted, tmp_path):
    from bertserve.config import Settings
    from bertserve.store.mounted import serve_mounted

    _, folder, store = mounted
    settings = serve_mounted(Settings(store=store.root, model_dir=folder, model_name="reviews"))
    assert store.versions("reviews") == ["1"] and settings.default_classify_model == "reviews"
