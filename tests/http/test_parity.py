"""Served answers are plain transformers' answers: many concurrent, distinct inputs of different lengths share
padded batches, and each request gets its own answer, equal to what transformers computes for that input
alone (fp32, 1e-5) and to what the server answers when the request is sent alone.

The tiny models have decisive outputs (initializer_range 0.5), so a swapped answer, a wrong padding mask or
a mixed-up version is far outside the tolerance."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.http.reference import (
    as_scores,
    assert_same_scores,
    close,
    transformers_fill,
    transformers_scores,
)
from tests.http.test_metrics import scrape, total
from tests.tiny_models import WORDS

CONCURRENCY = 16


def distinct_texts(count: int, seed: int) -> list[str]:
    """`count` different texts of 1 to 40 words: every batch they share is padded."""
    rng = random.Random(seed)
    texts = {" ".join(rng.choices(WORDS, k=1 + i % 40)) for i in range(count * 2)}
    return rng.sample(sorted(texts), count)


def send_all(base: str, path: str, bodies: list[dict], concurrency: int) -> list[dict]:
    def one(body: dict) -> dict:
        response = httpx.post(f"{base}{path}", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, bodies))


def batches_and_requests(base: str, endpoint: str) -> tuple[float, float]:
    samples = scrape(base)
    return (
        total(samples, "bertserve_batch_requests_count", endpoint=endpoint),
        total(samples, "bertserve_batch_requests_sum", endpoint=endpoint),
    )


def served_concurrently_and_alone(base: str, path: str, bodies: list[dict]) -> tuple[list, list]:
    """Every body sent concurrently (checked to have shared forward passes), then each alone."""
    endpoint = path.rsplit("/", 1)[-1]
    batches, requests = batches_and_requests(base, endpoint)
    together = send_all(base, path, bodies, CONCURRENCY)
    after_batches, after_requests = batches_and_requests(base, endpoint)
    assert after_requests - requests == len(bodies)
    assert after_batches - batches < len(bodies), "concurrent requests shared forward passes"
    alone = send_all(base, path, bodies, 1)
    return together, alone


# ---- classification -----------------------------------------------------------------------------------


def classify_bodies() -> list[dict]:
    """48 requests of 1-3 distinct texts each; some pairs, some for version 2 or the multi-label model."""
    texts = distinct_texts(96, seed=18)
    bodies = []
    for index in range(48):
        inputs: list = texts[: 1 + index % 3]
        texts = texts[len(inputs) :]
        if index % 5 == 4:
            inputs = [[inputs[0], f"{index} days"]]  # a pair
        body = {"inputs": inputs}
        if index % 4 == 1:
            body["model"] = "sentiment@2"
        elif index % 7 == 3:
            body["model"] = "topics"
        bodies.append(body)
    return bodies


def test_classify_answers_are_transformers_answers_and_each_request_gets_its_own(server, tiny_store):
    bodies = classify_bodies()
    together, alone = served_concurrently_and_alone(server, "/v1/classify", bodies)
    versions = {
        None: ("sentiment", "1", False),
        "sentiment@2": ("sentiment", "2", False),
        "topics": ("topics", "1", True),
    }
    for index, (body, answer, solo) in enumerate(zip(bodies, together, alone, strict=True)):
        name, version, multi_label = versions[body.get("model")]
        assert (answer["model"], answer["version"]) == (name, version)
        folder = str(tiny_store.version_dir(name, version))
        assert len(answer["predictions"]) == len(body["inputs"])
        for item, ranking, solo_ranking in zip(
            body["inputs"], answer["predictions"], solo["predictions"], strict=True
        ):
            expected = transformers_scores(folder, item, multi_label)
            assert_same_scores(as_scores(ranking), expected, (index, item))
            assert_same_scores(as_scores(ranking), as_scores(solo_ranking), (index, item, "alone"))
            assert [d["label"] for d in ranking] == sorted(expected, key=expected.get, reverse=True)


def test_top_k_one_is_the_argmax(server, tiny_store):
    texts = distinct_texts(6, seed=3)
    answer = httpx.post(f"{server}/v1/classify", json={"inputs": texts, "top_k": 1}, timeout=30).json()
    folder = str(tiny_store.version_dir("sentiment", "1"))
    argmaxes = []
    for text, ranking in zip(texts, answer["predictions"], strict=True):
        expected = transformers_scores(folder, text)
        (best,) = ranking
        assert best["label"] == max(expected, key=expected.get)
        assert close(best["score"], max(expected.values()))
        argmaxes.append(best["label"])
    assert len(set(argmaxes)) > 1, "texts with different winners: the check can tell labels apart"


# ---- fill-mask ----------------------------------------------------------------------------------------


def fill_mask_bodies() -> list[dict]:
    """40 distinct texts with 1-3 masks; some with targets (more of them than top_k, or fewer)."""
    targets = (None, ["tea", "coffee", "water", "dog"], None, ["paris", "london"])
    bodies = []
    for index, text in enumerate(distinct_texts(40, seed=81)):
        words = text.split()
        for mask in range(1 + index % 3):
            words.insert((mask * 7 + index) % (len(words) + 1), "[MASK]")
        body = {"inputs": " ".join(words), "top_k": 1 + index % 4}
        if chosen := targets[index % 4]:
            body["targets"] = chosen
        bodies.append(body)
    return bodies


def test_fill_mask_answers_are_the_pipelines_and_each_request_gets_its_own(server, tiny_store):
    bodies = fill_mask_bodies()
    assert any(len(b.get("targets", ())) > b["top_k"] and b["inputs"].count("[MASK]") > 1 for b in bodies)
    together, alone = served_concurrently_and_alone(server, "/v1/fill-mask", bodies)
    folder = str(tiny_store.version_dir("mlm", "1"))
    for body, answer, solo in zip(bodies, together, alone, strict=True):
        expected = transformers_fill(folder, body["inputs"], body["top_k"], body.get("targets"))
        ((masks,), (solo_masks,)) = answer["predictions"], solo["predictions"]
        assert len(masks) == body["inputs"].count("[MASK]") == len(expected), body
        for got, solo_got, want in zip(masks, solo_masks, expected, strict=True):
            assert [c["token"] for c in got] == [c["token"] for c in want], body
            assert [c["token_str"] for c in got] == [c["token_str"] for c in want], body
            assert [c["token"] for c in solo_got] == [c["token"] for c in want], (body, "alone")
            for candidate, solo_candidate, reference in zip(got, solo_got, want, strict=True):
                assert close(candidate["score"], reference["score"]), (body, candidate, reference)
                assert close(candidate["score"], solo_candidate["score"]), (body, "alone")
                if len(masks) == 1:
                    assert candidate["sequence"] == reference["sequence"], body
