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
