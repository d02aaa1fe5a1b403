"""minilm, the default store's embedding model (all-MiniLM-L6-v2 as published by bootstrap), on real drug
reviews: served vectors against the reference recipe (plain transformers + the folder's pooling and
normalization) and against the sentence-transformers package, every backend by cosine against fp32, and a
retrieval sanity check."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertserve.runtime.loaded import LoadedModel, Prepared
from bertserve.store.layout import ModelStore
from bertserve.training import assets
from bertserve.training.data import load_examples
from tests.server_process import running_server

pytestmark = pytest.mark.integration

# Least cosine to fp32 over the reviews, per backend: onnx is exact up to float rounding, bf16 keeps 8
# mantissa bits, the int8 ones quantize every Linear (measured: docs/performance.md#embeddings)
MIN_COSINE = {"onnx": 0.99999, "bf16": 0.999, "onnx-int8": 0.95, "int8": 0.9}
# hand-written paraphrases of drugsComTest reviews (by row)
PARAPHRASES = {
    1: "For four decades I have had migraine attacks, and a nasal spray is what I use when one starts.",
    3: "Since starting Latuda I feel normal and happy for the first time in years; it is a miracle drug.",
    5: "The cream made my face sore and very dry during the first days, no moisturiser helped.",
}


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    examples = load_examples(assets.fetch(assets.REVIEWS) / "drugsComTest.tsv", "review", "rating")
    return examples.texts[:64]


@pytest.fixture(scope="module")
def minilm(default_store):
    store = ModelStore(default_store)
    return store.read_manifest("minilm", "1"), store.version_dir("minilm", "1")


@pytest.fixture(scope="module")
def server(default_store):
    with running_server(default_store, env={"BERTSERVE_MODELS": "minilm"}) as base:
        yield base


def served(server: str, texts: list[str]) -> np.ndarray:
    response = httpx.post(f"{server}/v1/embeddings", json={"input": texts, "model": "minilm"}, timeout=120)
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]])


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_manifest_records_the_folders_pipeline(minilm):
    manifest, folder = minilm
    assert (manifest.task, manifest.pooling, manifest.normalize, manifest.dimensions) == (
        "embedding",
        "mean",
        True,
        384,
    )
    assert (
        manifest.max_length
        == json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
    )
    assert manifest.training["bootstrap"] == "embedding"


def test_served_vectors_match_the_reference_recipe(server, minilm, reviews):
    """Plain transformers, one text at a time (no padding), mean over the tokens, L2 normalization."""
    manifest, folder = minilm
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = []
        for text in reviews:
            encoded = tokenizer(text, truncation=True, max_length=manifest.max_length, return_tensors="pt")
            vector = model(**encoded).last_hidden_state[0].mean(dim=0)
            expected.append(torch.nn.functional.normalize(vector, dim=0).numpy())
    vectors = served(server, reviews)
    assert cosines(vectors, expected).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_served_vectors_match_the_sentence_transformers_package(server, minilm, reviews, monkeypatch):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, folder = minilm
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert model.max_seq_length == 256
    expected = model.encode(reviews, convert_to_numpy=True)
    assert cosines(served(server, reviews), expected).min() >= 0.99999


def test_tei_route_gives_the_same_vectors(server, reviews):
    response = httpx.post(f"{server}/v1/embed", json={"inputs": reviews[:8]}, timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()), served(server, reviews[:8]), atol=1e-6)


def test_a_paraphrase_finds_its_review(server, reviews):
    """Each paraphrase is closer to the review it rewords than to any of the other 63 reviews."""
    documents = served(server, reviews)
    queries = served(server, list(PARAPHRASES.values()))
    scores = queries @ documents.T
    for (row, text), ranking in zip(PARAPHRASES.items(), scores, strict=True):
        assert int(np.argmax(ranking)) == row, (text, np.argsort(ranking)[::-1][:3].tolist())


@pytest.mark.parametrize("backend", list(MIN_COSINE))
def test_every_backend_stays_close_to_fp32(minilm, reviews, backend):
    manifest, folder = minilm

    def vectors(name: str) -> torch.Tensor:
        model = LoadedModel(manifest, folder, name)
        requests = [
            Prepared(model, model.encode(reviews[i : i + 8], True)) for i in range(0, len(reviews), 8)
        ]
        return torch.cat(model.embed(requests, 32, 16384))

    if backend.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    assert cosines(vectors("fp32"), vectors(backend)).min() >= MIN_COSINE[backend]


def test_the_default_store_reranks_with_minilm(server, reviews):
    """Cohere's client against the default store, naming no model: minilm ranks by cosine, and each paraphrase
    puts the review it rewords first."""
    import cohere

    client = cohere.Client(api_key="unused", base_url=server)
    for row, text in PARAPHRASES.items():
        response = client.rerank(query=text, documents=reviews, top_n=3)
        assert response.results[0].index == row, (text, [r.index for r in response.results])
        assert response.dict()["scoring"] == "cosine" and response.dict()["model"] == "minilm"
