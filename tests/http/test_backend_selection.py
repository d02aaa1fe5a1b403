"""Backends chosen per served model: `auto` and per-model overrides are what the workers load, and /v1/models
and bertserve_model_info say so."""

from __future__ import annotations

import httpx
import pytest

from bertserve.runtime.backend_names import resolve_backend_name
from tests.http.conftest import build_tiny_store
from tests.server_process import running_server


@pytest.mark.slow
def test_auto_and_per_model_backends_are_loaded_and_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTSERVE_ONNX_CACHE", str(tmp_path / "onnx"))
    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    env = {"BERTSERVE_BACKEND": "auto", "BERTSERVE_MODEL_BACKENDS": "topics=onnx,mlm=fp32"}
    with running_server(store.root, env=env) as base:
        models = {m["name"]: m for m in httpx.get(f"{base}/v1/models").json()["models"]}
        backends = {name: {v["backend"] for v in m["versions"]} for name, m in models.items()}
        assert backends == {"sentiment": {resolve_backend_name("auto")}, "topics": {"onnx"}, "mlm": {"fp32"}}
        metrics = httpx.get(f"{base}/metrics").text
        assert 'model="topics"' in metrics and 'backend="onnx"' in metrics
        for model, body in (("topics", {"inputs": ["sleep"]}), ("sentiment", {"inputs": ["good"]})):
            answer = httpx.post(f"{base}/v1/classify", json={**body, "model": model})
            assert answer.status_code == 200, answer.text
            scores = [p["score"] for p in answer.json()["predictions"][0]]
            assert all(0.0 <= s <= 1.0 for s in scores) and len(scores) == 3


TEXTS = [
    "the drug worked and my headache went away",
    "terrible side effects",
    "i took one pill a day for two weeks and the pain was much less after the first week",
    "okay",
    "it made my headaches worse and i could not sleep at all",
    "great",
]


@pytest.mark.slow
def test_served_bf16_answers_are_bfloat16_computations_of_the_checkpoint(tmp_path):
    """The served bf16 scores against transformers' own model in bfloat16, text by text. One text per request,
    sent one after the other, is a batch of one: the same arithmetic on the same shapes, so the two agree to
    float32 rounding of the scores (padding a batch changes bf16's sums by up to a few percent of the logits'
    spread on this model; test_backends bounds that against float32). A served answer off by 1% (a scaled
    logit, a stray temperature) is ten times the limit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    store = build_tiny_store(tmp_path / "model_store", tmp_path / "hf")
    folder = store.version_dir("sentiment", "1")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(torch.bfloat16)
    with torch.inference_mode():
        reference = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits.float() for t in TEXTS])
    with running_server(store.root, env={"BERTSERVE_BACKEND": "bf16"}) as base:
        answers = [
            httpx.post(f"{base}/v1/classify", json={"inputs": [text], "model": "sentiment@1"}, timeout=60)
            for text in TEXTS
        ]
    assert all(a.status_code == 200 and a.headers["x-model-version"] == "sentiment@1" for a in answers)
    predictions = [a.json()["predictions"][0] for a in answers]
    labels = model.config.id2label
    served = torch.tensor(
        [
            [{p["label"]: p["score"] for p in ranking}[labels[i]] for i in range(len(labels))]
            for ranking in predictions
        ]
    ).log()
    # softmax forgets a constant per row: compare logits centred on each row's mean
    served = served - served.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    worst = (served - reference).abs().max().item() / reference.std().item()
    assert worst <= 0.003, f"served bf16 off by {worst:.4f} of the logits' spread"
