"""Every client mistake is a clear 4xx in the one error shape; none is a 500, none hurts other requests."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.http.reference import as_scores, assert_same_scores, transformers_scores
from tests.server_process import running_server

BAD_REQUESTS = [
    # (path, raw body or json, status, words the message must contain)
    ("/v1/classify", b'{"inputs": "unterminated', 400, "malformed JSON"),
    ("/v1/classify", {"inputs": 42}, 422, "inputs"),
    ("/v1/classify", {"inputs": []}, 422, "inputs"),
    ("/v1/classify", {"inputs": ""}, 422, "empty"),
    ("/v1/classify", {"inputs": ["fine", "   "]}, 422, "empty"),
    ("/v1/classify", {"inputs": "x", "top_k": 0}, 422, "top_k"),
    ("/v1/classify", {"inputs": "x", "inptus": "typo"}, 422, "inptus"),
    ("/v1/classify", {"inputs": [["only one half"]]}, 422, "inputs"),
    ("/v1/classify", {"inputs": "x", "model": "nope"}, 404, "'nope'"),
    ("/v1/classify", {"inputs": "x", "model": "sentiment@9"}, 404, "9"),
    ("/v1/classify", {"inputs": "x", "model": "sentiment:staging"}, 404, "staging"),
    ("/v1/classify", {"inputs": "x", "model": "mlm"}, 422, "fill-mask"),
    ("/v1/classify", {"inputs": "x", "model": "bad@ref@"}, 422, "bad@ref@"),
    ("/v1/classify", {"inputs": ["x"] * 65}, 413, "65 inputs"),
    ("/v1/classify", {"inputs": "pain " * 100, "truncate": False}, 422, "input 0 has 102 tokens"),
    ("/v1/classify", {"inputs": "x" * 20001}, 413, "characters"),
    ("/v1/fill-mask", {"inputs": "no mask here"}, 422, "no [MASK]"),
    ("/v1/fill-mask", {"inputs": "a [MASK]", "targets": ["zzqx"]}, 422, "zzqx"),
    ("/v1/fill-mask", {"inputs": "a [MASK]", "model": "sentiment"}, 422, "classification"),
    ("/v1/fill-mask", {"inputs": "a [MASK]", "top_k": "many"}, 422, "top_k"),
    # 8 x 62 masks x 100 candidates, each with its ~430-character sequence: ~25 MB, past the default 16 MiB
    ("/v1/fill-mask", {"inputs": ["[MASK] " * 62] * 8, "top_k": 100}, 413, "BERTSERVE_MAX_ANSWER_BYTES"),
]


def send(base: str, path: str, body) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(
            f"{base}{path}", content=body, headers={"content-type": "application/json"}, timeout=30
        )
    return httpx.post(f"{base}{path}", json=body, timeout=30)


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD_REQUESTS)
def test_bad_input_gets_a_clear_4xx_in_one_shape(server, path, body, status, words):
    response = send(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and words in error["message"], error


def test_oversized_body_is_413(server):
    huge = send(server, "/v1/classify", b'{"inputs": "' + b"a" * 1_100_000 + b'"}')
    assert huge.status_code == 413 and "limit" in huge.json()["error"]["message"]


def test_unknown_path_and_method_use_the_error_shape(server):
    assert httpx.get(f"{server}/v1/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(f"{server}/v1/classify").status_code == 405


@pytest.fixture(scope="module")
def patient_server(tiny_store):
    """A worker that waits half a second for more requests after the first: requests sent together are
    taken together, so the bad ones among them reach the worker beside good ones."""
    with running_server(tiny_store.root, "--workers", "1", "--batch-timeout", "0.5") as base:
        yield base


def test_bad_requests_never_fail_the_good_ones_batched_with_them(patient_server, tiny_store):
    """Bad refs only the worker can judge (the HTTP process cannot resolve them and queues them as they are),
    sent at once with good requests: each bad one gets its 404, each good one its own right answer."""
    texts = [f"the drug worked for {word}" for word in ("pain", "sleep", "days", "weeks", "nausea", "tea")]
    good = [{"inputs": [text]} for text in texts]
    bad = [{"inputs": "x", "model": ref} for ref in ("nope", "sentiment@9", "sentiment:staging")] * 2
    bodies = [body for pair in zip(good, bad, strict=True) for body in pair]

    async def send_together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(
                await asyncio.gather(*(client.post(f"{patient_server}/v1/classify", json=b) for b in bodies))
            )

    answers = asyncio.run(send_together())
    folder = str(tiny_store.version_dir("sentiment", "1"))
    for body, answer in zip(bodies, answers, strict=True):
        if "model" in body:
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown_model", (
                answer.text
            )
        else:
            assert answer.status_code == 200, answer.text
            (ranking,) = answer.json()["predictions"]
            assert_same_scores(as_scores(ranking), transformers_scores(folder, body["inputs"][0]), body)
    assert httpx.post(f"{patient_server}/v1/classify", json=good[0]).status_code == 200, "the worker survived"
