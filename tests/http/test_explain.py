"""POST /v1/explain over real HTTP: attributions that add up, attention, limits, metrics, the fp32 workers.

The server serves /v1/classify with int8, so these tests also show that explanations come from float32
workers of their own (api/explain.py), whatever the configured backend.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.http.test_metrics import scrape, total
from tests.server_process import running_server

TEXT = "the drug worked and my headache was less"


@pytest.fixture(scope="module")
def server(tiny_store):
    env = {"BERTSERVE_BACKEND": "int8", "BERTSERVE_EXPLAIN_WORKERS": "1"}
    with running_server(tiny_store.root, env=env) as base:
        yield base


def explain(server: str, **body) -> httpx.Response:
    return httpx.post(f"{server}/v1/explain", json={"inputs": TEXT, **body}, timeout=60)


def test_attributions_add_up_to_the_logit_difference(server):
    response = explain(server, model="sentiment@2", steps=64)
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "sentiment@2"
    body = response.json()
    assert (body["model"], body["version"]) == ("sentiment", "2")
    (answer,) = body["explanations"]
    difference = answer["logit"] - answer["baseline_logit"]
    assert abs(difference) > 0.1, "the tiny model's logits are decisive, so the check below means something"
    assert abs(sum(answer["attributions"]) - difference) <= 0.05 * abs(difference)
    assert answer["convergence_delta"] == pytest.approx(sum(answer["attributions"]) - difference, abs=1e-4)
    assert answer["tokens"] == ["[CLS]", *TEXT.split(), "[SEP]"]
    assert answer["word_ids"] == [None, 0, 1, 2, 3, 4, 5, 6, 7, None]
    assert len(answer["attributions"]) == len(answer["tokens"])
    assert answer["attributions"][0] == answer["attributions"][-1] == 0.0, (
        "[CLS]/[SEP] are the baseline's too"
    )
    assert "attention" not in answer


def test_the_default_target_is_the_predicted_label(server):
    predicted = httpx.post(f"{server}/v1/classify", json={"inputs": TEXT, "model": "sentiment@2"}).json()
    (answer,) = explain(server, model="sentiment@2").json()["explanations"]
    ranking = predicted["predictions"][0]
    assert answer["label"] == ranking[0]["label"]
    # classify runs int8 here, explain fp32: close, not equal
    assert answer["score"] == pytest.approx(ranking[0]["score"], abs=0.1)
    other = ranking[-1]["label"]
    (targeted,) = explain(server, model="sentiment@2", target=other).json()["explanations"]
    assert targeted["label"] == other
    assert targeted["score"] < answer["score"]


def test_word_pieces_and_sentence_pairs(server):
    (answer,) = explain(server, inputs=["i took the pill", "it helped, no sleeping"]).json()["explanations"]
    tokens = answer["tokens"]
    assert tokens.count("[SEP]") == 2
    piece = tokens.index("##ing")
    assert tokens[piece - 1] == "sleep"
    assert answer["word_ids"][piece] == answer["word_ids"][piece - 1], "a word piece keeps its word's id"
    assert answer["word_ids"][tokens.index("[SEP]")] is None


def test_attention_is_layer_by_head_by_query_by_key(server):
    (answer,) = explain(server, attention=True, steps=4).json()["explanations"]
    attention, n = answer["attention"], len(answer["tokens"])
    assert len(attention) == 2 and all(len(layer) == 4 for layer in attention)  # tiny_config: 2 x 4
    for layer in attention:
        for head in layer:
            assert len(head) == n and all(len(row) == n for row in head)
            assert all(sum(row) == pytest.approx(1, abs=1e-3) for row in head)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"steps": 0}, "invalid_request"),
        ({"steps": 257}, "invalid_request"),
        ({"target": "delighted"}, "unknown_label"),
        ({"inputs": "pain " * 80}, "input_too_long"),
        ({"inputs": ["a", "b", "c"]}, "invalid_request"),
        ({"inputs": ["the drug worked"]}, "invalid_request"),
    ],
)
def test_client_mistakes_are_422(server, body, code):
    response = explain(server, **body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code


def test_a_fill_mask_model_cannot_be_explained(server):
    response = explain(server, model="mlm")
    assert 400 <= response.status_code < 500
    assert "error" in response.json()


def test_truncate_cuts_a_long_input(server):
    (answer,) = explain(server, inputs="pain " * 80, truncate=True, steps=2).json()["explanations"]
    assert len(answer["tokens"]) == 64  # the tiny model's limit


def test_metrics_and_the_fp32_workers(server):
    before = scrape(server)
    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(lambda _: explain(server, steps=8).status_code, range(3)))
    assert codes == [200] * 3
    after = scrape(server)
    labels = {"endpoint": "explain", "model": "sentiment", "version": "1"}

    def delta(name, **more):
        return total(after, name, **labels, **more) - total(before, name, **labels, **more)

    assert delta("bertserve_requests_total", code="200") == 3
    assert delta("bertserve_request_duration_seconds_count", code="200") == 3
    assert delta("bertserve_model_duration_seconds_count") == 3
    assert delta("bertserve_batch_requests_sum") == delta("bertserve_batch_requests_count") == 3, (
        "one per batch"
    )
    assert delta("bertserve_batch_tokens_sum") == 3 * 10 * (8 + 2)  # 10 tokens, 8 path points + 2 ends
    assert total(after, "bertserve_model_info", endpoint="explain", backend="fp32", model="sentiment") == 2
    assert total(after, "bertserve_model_info", endpoint="classify", backend="int8", model="sentiment") == 2
    served = httpx.get(f"{server}/v1/models").json()["models"]
    backends = {v["backend"] for m in served if m["name"] == "sentiment" for v in m["versions"]}
    assert backends == {"int8"}, "/v1/models reports what /v1/classify answers with"


def test_the_page_is_served(server):
    page = httpx.get(f"{server}/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert 'id="explain-run"' in page.text
