"""/v1/embeddings (OpenAI's shape) and /v1/embed (TEI's shape) over real HTTP to a real server process, on
tiny random BERTs laid out as sentence-transformers folders; vectors checked against transformers by hand."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, set_alias
from tests.http.test_metrics import scrape, total
from tests.server_process import running_server
from tests.tiny_models import build_classifier, build_sentence_encoder

KEY = "embed-key-5c1d9e"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_INPUTS = 8
# MAX_INPUTS vectors of 32 floats pass it as base64 (~1.9 KB), not as JSON numbers (~3.6 KB)
MAX_ANSWER_BYTES = 2048
TEXTS = ["the pill helped my headache", "awful nausea for weeks", "okay"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ModelStore:
    """emb@1 (mean, normalized) and emb@2 (cls, not normalized; production -> 1), and a classifier."""
    base = tmp_path_factory.mktemp("embed-store")
    store = ModelStore(base / "model_store")
    import_hf_folder(store, build_sentence_encoder(base / "mean", "mean", True, seed=1), "emb")
    import_hf_folder(store, build_sentence_encoder(base / "cls", "cls", False, seed=2), "emb")
    set_alias(store, "emb", "production", "1")
    import_hf_folder(store, build_classifier(base / "clf"), "sentiment")
    return store


@pytest.fixture(scope="module")
def server(store) -> str:
    env = {
        "BERTSERVE_API_KEYS": KEY,
        "BERTSERVE_DEFAULT_EMBEDDING_MODEL": "emb:production",
        "BERTSERVE_MAX_INPUTS": str(MAX_INPUTS),
        "BERTSERVE_MAX_EMBEDDING_INPUTS": str(MAX_INPUTS),
        "BERTSERVE_MAX_ANSWER_BYTES": str(MAX_ANSWER_BYTES),
    }
    with running_server(store.root, "--batch-timeout", "0.02", env=env) as base:
        yield base


def post(base: str, path: str, body) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, headers=AUTH, timeout=30)


def reference(store: ModelStore, version: str, texts: list[str], pooling: str) -> torch.Tensor:
    """Plain transformers on the version folder, pooled by hand as sentence-transformers defines it."""
    folder = store.version_dir("emb", version)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        rows = []
        for text in texts:  # one at a time: no padding in the reference
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            rows.append(hidden.mean(dim=0) if pooling == "mean" else hidden[0])
    return torch.stack(rows)


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """Our error shape and status, or on /v1/embeddings OpenAI's (docs/clients.md): 400 for any bad request,
    its `type`, and `model_not_found` for an unknown model."""
    if response.request.url.path == "/v1/embeddings":
        status = 400 if status in (413, 422) else status
        code = "model_not_found" if code == "unknown_model" else code
        assert response.json()["error"]["type"], response.text
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"code", "message"} and error["message"]
    if code:
        assert error["code"] == code, error


def test_openai_shape_matches_mean_pooling_by_hand(server, store):
    response = post(server, "/v1/embeddings", {"input": TEXTS, "model": "emb"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and (body["model"], body["version"]) == ("emb", "1")
    assert response.headers["x-model-version"] == "emb@1"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert {item["object"] for item in body["data"]} == {"embedding"}
    vectors = np.array([item["embedding"] for item in body["data"]])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    expected = unit(reference(store, "1", TEXTS, "mean").numpy())
    np.testing.assert_allclose(vectors, expected, atol=2e-5)
    tokenizer = AutoTokenizer.from_pretrained(store.version_dir("emb", "1"))
    tokens = sum(len(ids) for ids in tokenizer(TEXTS)["input_ids"])
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}


def test_base64_decodes_as_openais_client_does(server):
    floats = post(server, "/v1/embeddings", {"input": TEXTS}).json()
    packed = post(server, "/v1/embeddings", {"input": TEXTS, "encoding_format": "base64"}).json()
    for plain, encoded in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(encoded["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(encoded["embedding"]), dtype="<f4")
        np.testing.assert_array_equal(decoded, np.array(plain["embedding"], dtype=np.float32))


def test_dimensions_truncate_and_renormalize(server):
    full = np.array(
        post(server, "/v1/embeddings", {"input": "the drug worked"}).json()["data"][0]["embedding"]
    )
    short = post(server, "/v1/embeddings", {"input": "the drug worked", "dimensions": 8}).json()
    vector = np.array(short["data"][0]["embedding"])
    assert vector.shape == (8,)
    np.testing.assert_allclose(vector, unit(full[:8]), atol=1e-6)
    assert_error(post(server, "/v1/embeddings", {"input": "x", "dimensions": 33}), 422, "bad_dimensions")
    assert_error(post(server, "/v1/embeddings", {"input": "x", "dimensions": 0}), 422)


def test_tei_shape_normalize_and_truncate(server, store):
    response = post(server, "/v1/embed", {"inputs": TEXTS})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "emb@1"
    vectors = np.array(response.json())
    assert vectors.shape == (3, 32)
    openai = [item["embedding"] for item in post(server, "/v1/embeddings", {"input": TEXTS}).json()["data"]]
    np.testing.assert_allclose(vectors, openai, atol=1e-6)
    raw = np.array(post(server, "/v1/embed", {"inputs": TEXTS, "normalize": False}).json())
    np.testing.assert_allclose(raw, reference(store, "1", TEXTS, "mean").numpy(), atol=2e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-3)
    single = np.array(post(server, "/v1/embed", {"inputs": "okay"}).json())
    np.testing.assert_allclose(single, vectors[2:], atol=1e-6)
    long_text = " ".join(["headache"] * 80)  # the folder says 48 tokens
    assert_error(post(server, "/v1/embed", {"inputs": long_text, "truncate": False}), 422, "input_too_long")
    assert post(server, "/v1/embed", {"inputs": long_text}).status_code == 200


def test_model_selection_follows_the_manifest_pooling(server, store):
    """emb@2 is a cls-pooling folder without Normalize: its OpenAI vectors are the raw [CLS] state."""
    body = post(server, "/v1/embeddings", {"input": TEXTS, "model": "emb@2"}).json()
    assert body["version"] == "2"
    vectors = np.array([item["embedding"] for item in body["data"]])
    np.testing.assert_allclose(vectors, reference(store, "2", TEXTS, "cls").numpy(), atol=2e-5)
    assert post(server, "/v1/embed", {"inputs": "x", "model": "emb:production"}).headers[
        "x-model-version"
    ] == ("emb@1")
    models = {m["name"]: m for m in httpx.get(f"{server}/v1/models", headers=AUTH).json()["models"]}
    assert models["emb"]["task"] == "embedding"
    assert sorted(models["emb"]["default_for"]) == ["embed", "embeddings"]
    versions = {v["version"]: v for v in models["emb"]["versions"]}
    assert (versions["1"]["pooling"], versions["1"]["normalize"], versions["1"]["dimensions"]) == (
        "mean",
        True,
        32,
    )
    assert (versions["2"]["pooling"], versions["2"]["normalize"]) == ("cls", False)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/embeddings", {"input": ""}, 422, None),
        ("/v1/embeddings", {"input": []}, 422, None),
        ("/v1/embeddings", {"input": ["ok", "   "]}, 422, None),
        ("/v1/embeddings", {"input": [[101, 2009, 102]]}, 422, "bad_token_id"),  # outside the vocabulary
        ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, 422, None),
        ("/v1/embeddings", {"input": ["x"] * (MAX_INPUTS + 1)}, 413, "too_many_inputs"),
        ("/v1/embeddings", {"input": "x", "model": "nope"}, 404, "unknown_model"),
        ("/v1/embeddings", {"input": "x", "model": "emb@9"}, 404, "unknown_model"),
        ("/v1/embeddings", {"input": "x", "model": "sentiment"}, 422, "wrong_task"),
        ("/v1/embed", {"inputs": ""}, 422, None),
        ("/v1/embed", {"inputs": ["x"] * (MAX_INPUTS + 1)}, 413, "too_many_inputs"),
        ("/v1/embeddings", {"input": [[5]] * (MAX_INPUTS + 1)}, 413, "too_many_inputs"),  # token ids
        ("/v1/embed", {"inputs": "x", "model": "sentiment"}, 422, "wrong_task"),
        ("/v1/embed", {"inputs": "x", "pooling": "cls"}, 422, None),
    ],
)
def test_client_mistakes_get_a_4xx_in_their_protocols_error_shape(server, path, body, status, code):
    assert_error(post(server, path, body), status, code)


def test_answers_past_max_answer_bytes_are_refused_before_they_are_computed(server):
    """Vectors x dimensions x bytes a number is rendered in, estimated before the forward pass: each route
    refuses in its protocol's shape, naming the setting, and no sequence is run for it."""
    eight = [f"text {i}" for i in range(MAX_INPUTS)]
    tensor = {"name": "text", "shape": [MAX_INPUTS], "datatype": "BYTES", "data": eight}
    long_text = " ".join(["headache"] * 40)
    before = scrape(server)
    for path, body, status in (
        ("/v1/embeddings", {"input": eight}, 400),  # OpenAI's status
        ("/v1/embed", {"inputs": eight}, 413),
        ("/embed", {"inputs": eight}, 413),
        ("/embed_all", {"inputs": TEXTS[0]}, 413),  # 7 token vectors
        ("/v2/models/emb/infer", {"inputs": [tensor]}, 413),
        ("/tokenize", {"inputs": long_text}, 413),  # 42 tokens of ~60 bytes
    ):
        response = post(server, path, body)
        assert response.status_code == status, (path, response.text)
        assert "BERTSERVE_MAX_ANSWER_BYTES" in response.text, (path, response.text)
    after = scrape(server)
    assert total(after, "bertserve_sequences_total") == total(before, "bertserve_sequences_total")
    packed = post(server, "/v1/embeddings", {"input": eight, "encoding_format": "base64"})
    short = post(server, "/v1/embeddings", {"input": eight, "dimensions": 8})
    assert (packed.status_code, short.status_code) == (200, 200), (packed.text, short.text)
    assert post(server, "/tokenize", {"inputs": "okay"}).status_code == 200


def test_classify_rejects_an_embedding_model(server):
    assert_error(post(server, "/v1/classify", {"inputs": "x", "model": "emb"}), 422, "wrong_task")


def test_both_routes_need_the_key(server):
    for path, body in (("/v1/embeddings", {"input": "x"}), ("/v1/embed", {"inputs": "x"})):
        assert_error(httpx.post(f"{server}{path}", json=body, timeout=30), 401)
        wrong = httpx.post(f"{server}{path}", json=body, headers={"Authorization": "Bearer no"}, timeout=30)
        assert_error(wrong, 401)


def test_metrics_count_each_route_and_the_workers_label_the_task(server):
    """/metrics stays open with keys set (auth_open_paths)."""
    before = scrape(server)

    def one(index: int) -> int:
        if index % 2:
            return post(server, "/v1/embed", {"inputs": TEXTS}).status_code
        return post(server, "/v1/embeddings", {"input": TEXTS}).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes == [200] * 40
    post(server, "/v1/embed", {"inputs": "x", "model": "nope"})
    after = scrape(server)

    def grew(name: str, **labels) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    ok = {"model": "emb", "version": "1", "code": "200"}
    assert grew("bertserve_requests_total", endpoint="embeddings", **ok) == 20
    assert grew("bertserve_requests_total", endpoint="embed", **ok) == 20
    assert grew("bertserve_requests_total", endpoint="embed", code="404") == 1
    assert grew("bertserve_sequences_total", endpoint="embeddings", model="emb", version="1") == 120
    batches = grew("bertserve_batch_requests_count", endpoint="embeddings", model="emb", version="1")
    assert 0 < batches <= 40
    for version in ("1", "2"):
        assert total(after, "bertserve_model_info", endpoint="embeddings", model="emb", version=version) > 0


def test_openapi_documents_both_shapes(server):
    spec = httpx.get(f"{server}/openapi.json", headers=AUTH, timeout=30).json()
    schemas = spec["components"]["schemas"]
    assert {"input", "encoding_format", "dimensions"} <= set(schemas["EmbeddingsRequest"]["properties"])
    assert {"inputs", "normalize", "truncate"} <= set(schemas["EmbedRequest"]["properties"])
    for path, schema in (("/v1/embeddings", "EmbeddingsRequest"), ("/v1/embed", "EmbedRequest")):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith(f"/{schema}")
