"""Both endpoints, model selection, /v1/models, /health, /docs over real HTTP to a real server process."""

from __future__ import annotations

import httpx
import pytest

from bertserve.store.publish import set_alias
from tests.http.reference import as_scores, assert_same_scores, transformers_fill, transformers_scores


def post(base: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=30)


def test_classify_one_text_answers_every_label_best_first(server):
    response = post(server, "/v1/classify", {"inputs": "the drug worked"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("sentiment", "1")
    assert response.headers["x-model-version"] == "sentiment@1"
    (ranking,) = body["predictions"]
    assert sorted(d["label"] for d in ranking) == ["negative", "neutral", "positive"]
    assert [d["score"] for d in ranking] == sorted((d["score"] for d in ranking), reverse=True)
    assert sum(d["score"] for d in ranking) == pytest.approx(1, abs=1e-5)


def test_classify_lists_pairs_and_top_k(server, tiny_store):
    folder = str(tiny_store.version_dir("sentiment", "1"))
    texts = ["good", "bad", "okay"]
    body = post(server, "/v1/classify", {"inputs": texts, "top_k": 1}).json()
    for text, (best,) in zip(texts, body["predictions"], strict=True):
        expected = transformers_scores(folder, text)
        assert best["label"] == max(expected, key=expected.get), "top_k 1 is the argmax"
    items = [["the pill", "worked"], ["no", "sleep"]]
    pairs = post(server, "/v1/classify", {"inputs": items}).json()["predictions"]
    for item, ranking in zip(items, pairs, strict=True):
        assert_same_scores(as_scores(ranking), transformers_scores(folder, item), item)
    joined = transformers_scores(folder, "the pill worked")
    assert as_scores(pairs[0]) != pytest.approx(joined, abs=1e-3), "a pair is not the concatenated text"


def test_model_selection_by_name_version_and_alias(server, tiny_store):
    assert post(server, "/v1/classify", {"inputs": "x", "model": "sentiment@2"}).json()["version"] == "2"
    assert (
        post(server, "/v1/classify", {"inputs": "x", "model": "sentiment:production"}).json()["version"]
        == "1"
    )
    for version in ("1", "2"):
        answer = post(
            server, "/v1/classify", {"inputs": "great drug", "model": f"sentiment@{version}"}
        ).json()
        expected = transformers_scores(str(tiny_store.version_dir("sentiment", version)), "great drug")
        assert_same_scores(as_scores(answer["predictions"][0]), expected, version)
    multi = post(server, "/v1/classify", {"inputs": "bad sleep", "model": "topics"}).json()
    assert multi["model"] == "topics"
    expected = transformers_scores(str(tiny_store.version_dir("topics", "1")), "bad sleep", multi_label=True)
    assert_same_scores(as_scores(multi["predictions"][0]), expected, "multi-label answers sigmoid scores")
    set_alias(tiny_store, "sentiment", "production", "2")
    try:
        moved = post(server, "/v1/classify", {"inputs": "x"})
        assert moved.json()["version"] == "2", "an alias moved in the store takes effect without a restart"
    finally:
        set_alias(tiny_store, "sentiment", "production", "1")


def test_fill_mask_one_and_two_masks_and_targets(server, tiny_store):
    folder = str(tiny_store.version_dir("mlm", "1"))
    cases = [
        ({"inputs": "the capital of france is [MASK] .", "top_k": 3}, 3, None),
        ({"inputs": ["the [MASK] is [MASK]", "a [MASK]"]}, 5, None),
        ({"inputs": "the [MASK] is good", "targets": ["tea", "coffee"]}, 5, ["tea", "coffee"]),
    ]
    for body, top_k, targets in cases:
        answer = post(server, "/v1/fill-mask", body).json()
        assert (answer["model"], answer["version"]) == ("mlm", "1")
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        for text, masks in zip(texts, answer["predictions"], strict=True):
            expected = transformers_fill(folder, text, top_k, targets)
            assert [[c["token_str"] for c in m] for m in masks] == [
                [c["token_str"] for c in m] for m in expected
            ]
            for got, want in zip(masks, expected, strict=True):
                assert [c["score"] for c in got] == pytest.approx([c["score"] for c in want], abs=1e-5)


def test_models_endpoint_lists_versions_aliases_and_what_is_served(server):
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models").json()["models"]}
    assert set(models) == {"sentiment", "topics", "mlm"}
    sentiment = models["sentiment"]
    assert sentiment["task"] == "classification" and sentiment["aliases"] == {"production": "1"}
    assert [v["version"] for v in sentiment["versions"]] == ["1", "2"]
    assert all(v["served"] and (v["backend"], v["device"]) == ("fp32", "cpu") for v in sentiment["versions"])
    assert sentiment["versions"][0]["labels"] == ["negative", "neutral", "positive"]
    assert sentiment["default_for"] == ["classify"] and models["mlm"]["default_for"] == ["fill-mask"]
    assert models["topics"]["versions"][0]["problem_type"] == "multi_label"


def test_liveness_answers_apart_from_readiness(server):
    response = httpx.get(f"{server}/live")
    assert (response.status_code, response.text) == (200, "ok")


def test_openapi_documents_the_error_shape_the_service_sends(server):
    """ErrorDetail carries request_id and 422's details, and our routes' error statuses refer to it."""
    spec = httpx.get(f"{server}/openapi.json").json()
    detail = spec["components"]["schemas"]["ErrorDetail"]["properties"]
    assert {"code", "message", "request_id", "details"} <= set(detail)
    responses = spec["paths"]["/v1/classify"]["post"]["responses"]
    for status in ("404", "422", "500", "503"):
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, status
    body = httpx.post(f"{server}/v1/classify", json={"inputs": []}).json()
    assert set(body["error"]) <= set(detail) and {"request_id", "details"} <= set(body["error"])


def test_health_docs_and_openapi(server):
    assert httpx.get(f"{server}/health").status_code == 200
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/classify", "/v1/fill-mask", "/v1/models"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"ClassifyRequest", "ClassifyResponse", "FillMaskRequest", "FillMaskResponse"} <= set(schemas)
    assert httpx.get(f"{server}/docs").status_code == 200
