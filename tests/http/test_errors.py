"""Every client mistake is a clear 4xx in the one error shape; none is a 500, none hurts other requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

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


def test_bad_requests_never_fail_the_good_ones_batched_with_them(server):
    good = {"inputs": ["the drug worked", "bad nausea"]}
    bad = [
        {"inputs": "x", "model": "nope"},
        {"inputs": "no mask"},
        {"inputs": "pain " * 100, "truncate": False},
    ]

    def call(i: int) -> tuple[int, int]:
        if i % 2 == 0:
            return 200, send(server, "/v1/classify", good).status_code
        body = bad[i % 3]
        path = "/v1/fill-mask" if "mask" in str(body["inputs"]) else "/v1/classify"
        return 400, send(server, path, body).status_code

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(96)))
    assert all(code == 200 for kind, code in results if kind == 200)
    assert all(400 <= code < 500 for kind, code in results if kind == 400)
    assert httpx.post(f"{server}/v1/classify", json=good).status_code == 200, "the worker survived"
