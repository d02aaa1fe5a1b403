"""Both endpoints, model selection, /v1/models, /health, /docs over real HTTP to a real server process."""

from __future__ import annotations

import httpx
import pytest

from bertserve.store.publish import set_alias


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


def test_classify_lists_pairs_and_top_k(server):
    body = post(server, "/v1/classify", {"inputs": ["good", "bad", "okay"], "top_k": 1}).json()
    assert [len(p) for p in body["predictions"]] == [1, 1, 1]
    pairs = post(server, "/v1/classify", {"inputs": [["the pill", "worked"], ["no", "sleep"]]}).json()
    assert len(pairs["predictions"]) == 2
    single = post(server, "/v1/classify", {"inputs": "the pill worked"}).json()
    assert pairs["predictions"][0] != single["predictions"][0], "a pair is not the concatenated text"


def test_model_selection_by_name_version_and_alias(server, tiny_store):
    assert post(server, "/v1/classify", {"inputs": "x", "model": "sentiment@2"}).json()["version"] == "2"
    assert (
        post(server, "/v1/classify", {"inputs": "x", "model": "sentiment:production"}).json()["version"]
        == "1"
    )
    one = post(server, "/v1/classify", {"inputs": "great drug", "model": "sentiment@1"}).json()["predictions"]
    two = post(server, "/v1/classify", {"inputs": "great drug", "model": "sentiment@2"}).json()["predictions"]
    assert one != two, "two versions are two different checkpoints"
    multi = post(server, "/v1/classify", {"inputs": "bad sleep", "model": "topics"}).json()
    assert multi["model"] == "topics"
    assert abs(sum(d["score"] for d in multi["predictions"][0]) - 1) > 1e-3, (
        "multi-label answers sigmoid scores"
    )
    set_alias(tiny_store, "sentiment", "production", "2")
    try:
        moved = post(server, "/v1/classify", {"inputs": "x"})
        assert moved.json()["version"] == "2", "an alias moved in the store takes effect without a restart"
    finally:
        set_alias(tiny_store, "sentiment", "production", "1")


def test_fill_mask_one_and_two_masks_and_targets(server):
    body = post(server, "/v1/fill-mask", {"inputs": "the capital of france is [MASK] .", "top_k": 3}).json()
    assert (body["model"], body["version"]) == ("mlm", "1")
    ((candidates,),) = body["predictions"]
    assert len(candidates) == 3 and all(
        {"token", "token_str", "score", "sequence"} <= set(c) for c in candidates
    )
    two = post(server, "/v1/fill-mask", {"inputs": ["the [MASK] is [MASK]", "a [MASK]"]}).json()[
        "predictions"
    ]
    assert [len(masks) for masks in two] == [2, 1] and len(two[0][0]) == 5
    targeted = post(
        server, "/v1/fill-mask", {"inputs": "the [MASK] is good", "targets": ["tea", "coffee"]}
    ).json()
    assert {c["token_str"] for c in targeted["predictions"][0][0]} == {"tea", "coffee"}


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


def test_health_docs_and_openapi(server):
    assert httpx.get(f"{server}/health").status_code == 200
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/classify", "/v1/fill-mask", "/v1/models"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"ClassifyRequest", "ClassifyResponse", "FillMaskRequest", "FillMaskResponse"} <= set(schemas)
    assert httpx.get(f"{server}/docs").status_code == 200
