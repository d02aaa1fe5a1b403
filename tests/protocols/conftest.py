"""One store and one real server for the protocol tests (test_clients.py, test_protocols.py): an embedding
model with sentence-transformers prompts (minilm, the default store's name), a cross-encoder imported without
a task (ce: detected from its one-output config) and a classifier, with an API key; and the answers each
should give, computed with plain transformers on the store's version folders."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder
from tests.protocols.common import KEY, PROMPTS
from tests.server_process import ServerURL, running_server
from tests.tiny_models import build_classifier, build_cross_encoder, build_sentence_encoder


@pytest.fixture(scope="session")
def protocol_store(tmp_path_factory) -> ModelStore:
    base = tmp_path_factory.mktemp("protocols")
    store = ModelStore(base / "model_store")
    encoder = build_sentence_encoder(base / "minilm", prompts=PROMPTS, seed=3)
    import_hf_folder(store, encoder, "minilm")
    import_hf_folder(store, build_cross_encoder(base / "ce", seed=4), "ce")
    import_hf_folder(store, build_classifier(base / "clf", seed=5), "sentiment")
    return store


@pytest.fixture(scope="session")
def protocol_server(protocol_store) -> ServerURL:
    env = {"BERTSERVE_API_KEYS": KEY, "BERTSERVE_MAX_INPUTS": "8"}
    with running_server(protocol_store.root, "--workers", "1", env=env) as base:
        yield base


class Reference:
    """What each model answers, by plain transformers on its store folder (one text at a time: no padding)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self.folder = {name: store.version_dir(name, "1") for name in ("minilm", "ce", "sentiment")}
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder["minilm"])

    @torch.no_grad()
    def embed(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        model = AutoModel.from_pretrained(self.folder["minilm"]).eval()
        rows = [
            model(**self.tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0) for text in texts
        ]
        vectors = torch.stack(rows)
        return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors

    @torch.no_grad()
    def token_states(self, text: str) -> torch.Tensor:
        model = AutoModel.from_pretrained(self.folder["minilm"]).eval()
        return model(**self.tokenizer(text, return_tensors="pt")).last_hidden_state[0]

    @torch.no_grad()
    def cross_scores(self, query: str, documents: list[str]) -> list[float]:
        """A cross-encoder's sigmoid(logit) per (query, document) pair, as sentence-transformers scores."""
        model = AutoModelForSequenceClassification.from_pretrained(self.folder["ce"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(self.folder["ce"])
        return [
            torch.sigmoid(model(**tokenizer(query, doc, return_tensors="pt")).logits[0, 0]).item()
            for doc in documents
        ]

    def cosine_scores(self, query: str, documents: list[str]) -> list[float]:
        vectors = self.embed([query, *documents])
        return (vectors[1:] @ vectors[0]).tolist()

    @torch.no_grad()
    def classify(self, text: str) -> dict[str, float]:
        model = AutoModelForSequenceClassification.from_pretrained(self.folder["sentiment"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(self.folder["sentiment"])
        probs = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1)
        return {model.config.id2label[i]: p for i, p in enumerate(probs.tolist())}


@pytest.fixture(scope="session")
def reference(protocol_store) -> Reference:
    return Reference(protocol_store)
