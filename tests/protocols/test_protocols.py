"""The protocol routes over plain HTTP, for what the client packages never send: every TEI field with TEI's
meaning, each protocol's error shape and status, the limits, auth headers, metrics labels and /docs."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from bertserve.protocols.errors import reshape
from tests.http.test_metrics import scrape, total
from tests.protocols.common import AUTH, DOCUMENTS, KEY, PROMPTS, QUERY, TEXTS

LONG = " ".join(["the pill helped my headache"] * 20)  # 100+ tokens: past minilm's 48


def post(base: str, path: str, body, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers=AUTH if headers is None else headers, timeout=60)


def test_tei_embed_fields(protocol_server, reference):
    base = protocol_server
    plain = np.array(post(base, "/embed", {"inputs": TEXTS}).json())
    np.testing.assert_allclose(plain, reference.embed(TEXTS).numpy(), atol=2e-5)
    null_truncate = post(base, "/embed", {"inputs": LONG, "truncate": None})
    assert null_truncate.status_code == 200  # null: this server's default, cut
    right = np.array(post(base, "/embed", {"inputs": LONG, "truncation_direction": "Right"}).json())
    left = np.array(post(base, "/embed", {"inputs": LONG, "truncation_direction": "left"}).json())
    np.testing.assert_allclose(right, null_truncate.json(), atol=1e-6)
    assert not np.allclose(left, right, atol=1e-3)
    raw = np.array(post(base, "/embed", {"inputs": TEXTS[0], "normalize": False}).json())
    np.testing.assert_allclose(raw, reference.embed(TEXTS[:1], normalize=False).numpy(), atol=1e-4)
    short = np.array(post(base, "/embed", {"inputs": TEXTS[0], "dimensions": 8}).json())
    unit = plain[0, :8] / np.linalg.norm(plain[0, :8])
    np.testing.assert_allclose(short[0], unit, atol=1e-5)
    ids = reference.tokenizer(TEXTS[0])["input_ids"]  # with [CLS] / [SEP]: used as they are
    np.testing.assert_allclose(post(base, "/embed", {"inputs": [ids]}).json(), plain[:1], atol=2e-5)
    prompted = post(base, "/embed", {"inputs": TEXTS[0], "prompt_name": "passage"}).json()
    expected = reference.embed([PROMPTS["passage"] + TEXTS[0]]).numpy()
    np.testing.assert_allclose(prompted, expected, atol=2e-5)


def test_tei_embed_all_similarity_rerank(protocol_server, reference):
    base = protocol_server
    states = np.array(post(base, "/embed_all", {"inputs": TEXTS[1]}).json())
    np.testing.assert_allclose(states[0], reference.token_states(TEXTS[1]).numpy(), atol=1e-4)
    body = {"inputs": {"source_sentence": QUERY, "sentences": DOCUMENTS}}
    expected = reference.cosine_scores(QUERY, DOCUMENTS)
    assert post(base, "/similarity", body).json() == pytest.approx(expected, abs=1e-5)
    ranked = post(base, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "return_text": True}).json()
    assert [r["index"] for r in ranked] == sorted(range(3), key=lambda i: -expected[i])  # default: minilm
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranked)
    raw = post(
        base, "/rerank", {"query": QUERY, "texts": DOCUMENTS, "model": "ce", "raw_scores": True}
    ).json()
    logits = torch.logit(torch.tensor(reference.cross_scores(QUERY, DOCUMENTS)), eps=0).tolist()
    assert {r["index"]: r["score"] for r in raw} == pytest.approx(dict(enumerate(logits)), abs=1e-4)
    cohere_shape = post(base, "/v1/rerank", {"query": QUERY, "documents": DOCUMENTS, "model": "ce"}).json()
    assert cohere_shape["scoring"] == "cross-encoder" and "document" not in cohere_shape["results"][0]


def test_tei_predict_single_pair_and_batch(protocol_server, reference):
    base = protocol_server
    one = post(base, "/predict", {"inputs": TEXTS[0]}).json()
    expected = reference.classify(TEXTS[0])
    assert {p["label"]: p["score"] for p in one} == pytest.approx(expected, abs=1e-5)
    assert isinstance(post(base, "/predict", {"inputs": ["the pill", "helped"]}).json()[0], dict)  # a pair
    batch = post(base, "/predict", {"inputs": TEXTS, "raw_scores": True}).json()
    assert len(batch) == 3 and all(len(ranking) == 3 for ranking in batch)
    assert max(p["score"] for p in batch[0]) > 1 or min(p["score"] for p in batch[0]) < 0  # logits


def test_tei_root_tokenize_decode_info(protocol_server, reference):
    base = protocol_server
    np.testing.assert_allclose(
        post(base, "/", {"inputs": TEXTS[0]}).json(), reference.embed(TEXTS[:1]).numpy(), atol=2e-5
    )
    tokens = post(base, "/tokenize", {"inputs": "the pill", "add_special_tokens": True}).json()[0]
    assert [t["text"] for t in tokens] == ["[CLS]", "the", "pill", "[SEP]"]
    assert (tokens[2]["start"], tokens[2]["stop"], tokens[0]["special"]) == (4, 8, True)
    ids = [t["id"] for t in tokens]
    assert post(base, "/decode", {"ids": ids}).json() == ["the pill"]
    info = httpx.get(f"{base}/info", headers=AUTH).json()
    assert info["model_id"] == "minilm@1" and info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["max_input_length"] == 48


def test_tei_errors(protocol_server):
    base = protocol_server
    cases = [
        ({"inputs": LONG, "truncate": False}, 413, "validation"),
        ({"inputs": "x", "prompt_name": "nope"}, 422, "validation"),
        ({"inputs": [[5, 10**6]]}, 422, "tokenizer"),
        ({"inputs": "x", "bogus": 1}, 422, "validation"),
        ({"inputs": "x", "model": "nothing"}, 422, "validation"),
    ]
    for body, status, kind in cases:
        response = post(base, "/embed", body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error_type"] == kind and response.json()["error"], response.text
    assert post(base, "/embed", {"inputs": ["x"] * 2049}).status_code == 413
    # 2,048 inputs cut to 48 tokens each: past BERTSERVE_MAX_REQUEST_TOKENS (65,536); OpenAI's 400 there
    fifty_tokens = " ".join(["the pill helped my headache"] * 10)  # and a body under 1 MiB
    too_many_tokens = post(base, "/v1/embeddings", {"input": [fifty_tokens] * 2048})
    assert too_many_tokens.status_code == 400 and "98304 tokens" in too_many_tokens.json()["error"]["message"]
    assert post(base, "/embed", {"inputs": [fifty_tokens] * 2048}).status_code == 413
    huge = httpx.post(f"{base}/embed", content=b"{" + b" " * 1_100_000 + b"}", headers=AUTH, timeout=30)
    assert huge.status_code == 413 and huge.json()["error_type"] == "validation"
    denied = post(base, "/predict", {"inputs": "x"}, headers={"X-Request-Id": "tei-denied-1"})
    assert denied.status_code == 401 and set(denied.json()) == {"error", "error_type"}
    assert denied.headers["x-request-id"] == "tei-denied-1"  # a reshaped error keeps its headers
    assert denied.headers["www-authenticate"] == "Bearer"


def test_tokenize_and_decode_take_the_input_limits(protocol_server):
    """As every other route: BERTSERVE_MAX_INPUTS (8 here) texts or id arrays, BERTSERVE_MAX_INPUT_CHARS
    (20,000) characters a text, /decode's texts included; TEI's 413."""
    base = protocol_server
    letter = post(base, "/tokenize", {"inputs": "a", "add_special_tokens": False}).json()[0][0]["id"]
    for path, body, words in (
        ("/tokenize", {"inputs": ["a"] * 9}, "9 inputs"),
        ("/tokenize", {"inputs": "a " * 10_001}, "20002 characters"),
        ("/decode", {"ids": [[letter]] * 9}, "9 inputs"),
        ("/decode", {"ids": [letter] * 10_001}, "20001 characters"),
    ):
        response = post(base, path, body)
        assert response.status_code == 413, (path, response.text[:300])
        assert response.json()["error_type"] == "validation" and words in response.json()["error"]
    assert post(base, "/decode", {"ids": [[letter]] * 8}).json() == ["a"] * 8


def test_embed_all_refuses_an_answer_past_max_answer_bytes_before_computing_it(protocol_server):
    """2,000 arrays of 30 token ids (a 240 KB body) would answer 64,000 token vectors: ~25 MB of JSON at
    this model's 32 dimensions, past the default 16 MiB. TEI's 413 names the setting; no sequence is run."""
    base = protocol_server
    letters = " ".join("abcdefghijklmnopqrstuvwxyzabcd")
    ids = [
        t["id"] for t in post(base, "/tokenize", {"inputs": letters, "add_special_tokens": False}).json()[0]
    ]
    before = scrape(base)
    response = post(base, "/embed_all", {"inputs": [ids] * 2000})
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error_type"] == "validation"
    assert "BERTSERVE_MAX_ANSWER_BYTES" in response.json()["error"], response.json()
    computed = [total(s, "bertserve_sequences_total", endpoint="embeddings") for s in (before, scrape(base))]
    assert computed[1] == computed[0]
    assert httpx.get(f"{base}/live").status_code == 200


def test_error_statuses_by_protocol():
    """What no tiny model can be made to do on demand: a full queue, a failed batch."""
    full = {"error": {"code": "unavailable", "message": "server busy: request queue is full"}}
    failed = {"error": {"code": "internal_error", "message": "the model failed on this batch"}}
    assert reshape("tei", 503, full) == (429, {"error": full["error"]["message"], "error_type": "overloaded"})
    draining = {"error": {"code": "draining", "message": "server is shutting down (queue is full)"}}
    assert reshape("tei", 503, draining)[0] == 503, "by the code, never by the message's words"
    assert reshape("tei", 500, failed)[0] == 424
    assert reshape("openai", 503, full)[0] == 503
    assert reshape("openai", 429, full)[1]["error"]["type"] == "rate_limit_error"
    assert reshape("kserve", 422, failed) == (400, {"error": failed["error"]["message"]})


def test_kserve_json_routes(protocol_server, reference):
    base = protocol_server
    assert httpx.get(f"{base}/v2", headers=AUTH).json()["extensions"] == ["binary_tensor_data"]
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    meta = httpx.get(f"{base}/v2/models/minilm/versions/1", headers=AUTH).json()
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}]
    tensor = {"name": "text", "shape": [1, 2], "datatype": "BYTES", "data": [TEXTS[:2]]}
    body = {"id": "r-7", "inputs": [tensor], "outputs": [{"name": "label"}]}
    answer = post(base, "/v2/models/sentiment/infer", body).json()
    assert answer["id"] == "r-7" and [o["name"] for o in answer["outputs"]] == ["label"]
    expected = [max(d, key=d.get) for d in map(reference.classify, TEXTS[:2])]
    assert answer["outputs"][0]["data"] == expected
    for path, request, status in [
        ("/v2/models/nothing/infer", {"inputs": [tensor]}, 404),
        ("/v2/models/ce/infer", {"inputs": [tensor]}, 400),  # a cross-encoder ranks: /v1/rerank
        ("/v2/models/sentiment/infer", {"inputs": [{**tensor, "shape": [3]}]}, 400),
        ("/v2/models/sentiment/infer", {"inputs": [{**tensor, "datatype": "FP32"}]}, 400),
        ("/v2/models/sentiment/infer", {"inputs": [tensor], "outputs": [{"name": "nope"}]}, 400),
        ("/v2/models/sentiment/infer", {"inputs": []}, 400),
        ("/v2/models/sentiment/versions/9/infer", {"inputs": [tensor]}, 404),
        ("/v2/models/sentiment/infer", [1, 2], 400),
    ]:
        response = post(base, path, request)
        assert response.status_code == status, (path, request, response.text)
        assert list(response.json()) == ["error"] and isinstance(response.json()["error"], str)
    assert httpx.get(f"{base}/v2/models/nothing", headers=AUTH).status_code == 404
    assert httpx.get(f"{base}/v2/models/minilm", headers={"X-API-Key": KEY}).status_code == 200


def test_root_bodies_never_500(protocol_server):
    for body in (
        [],
        [1],
        "x",
        None,
        {"inputs": {"source_sentence": 1}},
        {"query": "q"},
        {"parameters": 3},
        {},
    ):
        response = post(protocol_server, "/", body)
        assert 400 <= response.status_code < 500, (body, response.text)
        assert "error_type" in response.json()


def test_metrics_labels_and_openapi(protocol_server):
    base = protocol_server
    before = scrape(base)  # /metrics is open
    post(base, "/embed", {"inputs": "x"})
    post(base, "/v1/rerank", {"query": "x", "documents": ["y"]})
    tensor = {"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x"]}
    post(base, "/v2/models/sentiment/infer", {"inputs": [tensor]})
    after = scrape(base)
    for endpoint in ("tei-embed", "rerank", "v2-infer-classify"):
        counted = [
            total(s, "bertserve_requests_total", endpoint=endpoint, code="200") for s in (before, after)
        ]
        assert counted[1] - counted[0] == 1, endpoint
    schema = httpx.get(f"{base}/openapi.json", headers=AUTH).json()
    paths = schema["paths"]
    for path in (
        "/",
        "/embed",
        "/predict",
        "/rerank",
        "/v1/rerank",
        "/v2/models/{model_name}/infer",
        "/info",
    ):
        assert path in paths, path
    assert not [path for path in paths if path.startswith("/_protocol")]
    assert {"models", "object", "data"} <= set(
        schema["components"]["schemas"]["ModelsResponse"]["properties"]
    )


def test_schemathesis_finds_no_server_error_on_the_protocol_routes(protocol_server, tmp_path):
    """Property-based, bounded and derandomized, as tests/reliability/test_hostile.py does for our routes: the
    protocol routes with an embedding model, a cross-encoder and a classifier behind them (the hostile test's
    store has no embedding model). Only 5xx and content types are checked: the protocols' error bodies are
    theirs, not the documented 422 schema."""
    import subprocess
    import sys
    from pathlib import Path
    from xml.etree import ElementTree

    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{protocol_server}/openapi.json",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--checks",
        "not_a_server_error",
        # our own routes (and their explain's 64-step integrated gradients) are test_hostile.py's
        "--exclude-path-regex",
        "^/(v1/(classify|fill-mask|explain)|health)$",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "junit.xml"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    tested = {
        case.get("name") for case in ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    }
    for operation in ("POST /", "POST /embed", "POST /rerank", "POST /v1/rerank", "POST /v1/embeddings"):
        assert operation in tested, tested
    assert "POST /v2/models/{model_name}/infer" in tested and "POST /tokenize" in tested
    assert httpx.post(f"{protocol_server}/embed", json={"inputs": "x"}, headers=AUTH).status_code == 200
