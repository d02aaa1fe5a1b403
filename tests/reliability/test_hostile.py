"""Hostile input against a real server: every case is a 4xx in the one error shape or a valid 200, never a
5xx, and the server answers normally afterwards. Then property-based fuzzing of /openapi.json.

The serve path also never unpickles anything nor runs code shipped with a model (trust_remote_code)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from bertserve.store.errors import IntegrityError, StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.publish import publish_version, verify_version
from tests.http.conftest import server, tiny_store  # noqa: F401  (the shared tiny store and its server)

SERVICE = Path(__file__).parents[2] / "bertserve"
JSON = {"content-type": "application/json"}
TEN_MB = 10 * 1024 * 1024


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b'"x"' + b"]" * depth + b"}"


def text_body(inputs: str, **fields) -> bytes:
    return json.dumps({"inputs": inputs, **fields}).encode()


# (id, path, body bytes, extra headers, statuses allowed besides any 4xx)
HOSTILE = [
    ("nested-json-100k", "/v1/classify", nested(100_000), JSON),
    ("nested-json-1k", "/v1/fill-mask", nested(1_000), JSON),
    (
        "nested-objects",
        "/v1/classify",
        b'{"inputs": "x", "model": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
        JSON,
    ),
    ("body-10mb", "/v1/classify", text_body("a" * TEN_MB), JSON),
    ("text-100k-chars", "/v1/classify", text_body("pain " * 20_000), JSON),
    ("text-100k-chars-fill", "/v1/fill-mask", text_body("[MASK] " + "b" * 100_000), JSON),
    ("invalid-utf8", "/v1/classify", b'{"inputs": "caf\xc3\x28 \xff\xfe"}', JSON),
    ("invalid-utf8-key", "/v1/classify", b'{"inp\xffuts": "x"}', JSON),
    ("nul-escaped", "/v1/classify", b'{"inputs": "a\\u0000b"}', JSON),
    ("nul-raw", "/v1/classify", b'{"inputs": "a\x00b"}', JSON),
    ("nul-only", "/v1/fill-mask", b'{"inputs": "\\u0000[MASK]\\u0000"}', JSON),
    ("top-k-huge", "/v1/classify", text_body("x", top_k=10**30), JSON),
    ("top-k-int64", "/v1/fill-mask", text_body("a [MASK]", top_k=2**63), JSON),
    ("top-k-5000-digits", "/v1/classify", b'{"inputs": "x", "top_k": ' + b"9" * 5000 + b"}", JSON),
    ("top-k-negative", "/v1/classify", text_body("x", top_k=-1), JSON),
    ("top-k-negative-fill", "/v1/fill-mask", text_body("a [MASK]", top_k=-5), JSON),
    ("top-k-float", "/v1/fill-mask", text_body("a [MASK]", top_k=2.5), JSON),
    ("top-k-nan", "/v1/classify", b'{"inputs": "x", "top_k": NaN}', JSON),
    ("top-k-infinity", "/v1/fill-mask", b'{"inputs": "a [MASK]", "top_k": -Infinity}', JSON),
    ("thousands-of-masks", "/v1/fill-mask", text_body("[MASK]" * 3000), JSON),
    ("thousands-of-masks-no-truncate", "/v1/fill-mask", text_body("[MASK] " * 2500, truncate=False), JSON),
    ("masks-in-many-inputs", "/v1/fill-mask", json.dumps({"inputs": ["[MASK] " * 60] * 64}).encode(), JSON),
    ("combining-chars", "/v1/classify", text_body("e" + "\u0301" * 5000), JSON),
    ("rtl-and-bidi", "/v1/fill-mask", text_body("\u202e مرحبا [MASK] שלום \u202c"), JSON),
    ("emoji-zwj", "/v1/classify", text_body("👩\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 " * 200), JSON),
    ("lone-surrogate", "/v1/classify", b'{"inputs": "pain \\ud800 here"}', JSON),
    ("lone-surrogate-fill", "/v1/fill-mask", b'{"inputs": "\\udfff [MASK] \\ud800"}', JSON),
    ("lone-surrogate-target", "/v1/fill-mask", b'{"inputs": "a [MASK]", "targets": ["\\ud800"]}', JSON),
    ("lone-surrogate-model", "/v1/classify", b'{"inputs": "x", "model": "\\ud800"}', JSON),
    ("lone-surrogate-key", "/v1/classify", b'{"inputs": "x", "\\ud800": 1}', JSON),
    ("noncharacters", "/v1/classify", text_body("\ufffe\uffff\U0010ffff \U000e0001"), JSON),
    ("model-10k-chars", "/v1/classify", text_body("x", model="m" * 10_000), JSON),
    ("model-path-traversal", "/v1/classify", text_body("x", model="../../etc/passwd"), JSON),
    ("model-alias-traversal", "/v1/classify", text_body("x", model="sentiment:../../aliases"), JSON),
    ("pair-of-three", "/v1/classify", json.dumps({"inputs": [["a", "b", "c"]]}).encode(), JSON),
    ("pair-of-numbers", "/v1/classify", json.dumps({"inputs": [[1, 2]]}).encode(), JSON),
    ("duplicate-keys", "/v1/classify", b'{"inputs": "x", "inputs": 5}', JSON),
    ("json-array", "/v1/classify", b"[]", JSON),
    ("json-null", "/v1/fill-mask", b"null", JSON),
    ("json-string", "/v1/classify", b'"inputs"', JSON),
    ("empty-body", "/v1/classify", b"", JSON),
    ("bom-prefixed", "/v1/classify", b'\xef\xbb\xbf{"inputs": "x"}', JSON),
    ("utf16-body", "/v1/classify", '{"inputs": "x"}'.encode("utf-16"), JSON),
    ("text-plain", "/v1/classify", text_body("x"), {"content-type": "text/plain"}),
    ("form-urlencoded", "/v1/classify", b"inputs=x", {"content-type": "application/x-www-form-urlencoded"}),
    (
        "multipart",
        "/v1/fill-mask",
        b"--b\r\n\r\nx\r\n--b--",
        {"content-type": "multipart/form-data; boundary=b"},
    ),
    ("no-content-type", "/v1/classify", text_body("x"), {}),
    (
        "json-charset-latin1",
        "/v1/classify",
        '{"inputs": "café"}'.encode("latin-1"),
        {"content-type": "application/json; charset=latin-1"},
    ),
    ("xml", "/v1/classify", b"<inputs>x</inputs>", {"content-type": "application/xml"}),
    ("explain-lone-surrogate-target", "/v1/explain", b'{"inputs": "x", "target": "\\ud800"}', JSON),
    ("explain-steps-huge", "/v1/explain", b'{"inputs": "x", "steps": 1e12}', JSON),
    ("explain-list-of-pairs", "/v1/explain", json.dumps({"inputs": [["a", "b"]]}).encode(), JSON),
    ("explain-emoji-attention", "/v1/explain", text_body("👩\u200d👩\u200d👧 " * 300, attention=True), JSON),
    ("explain-cut-attention", "/v1/explain", text_body("é " * 300, attention=True, truncate=True), JSON),
]


def post(base: str, path: str, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(f"{base}{path}", content=body, headers=headers, timeout=60)


def assert_still_serving(base: str) -> None:
    assert httpx.get(f"{base}/health", timeout=30).status_code == 200
    good = httpx.post(f"{base}/v1/classify", json={"inputs": "the drug worked"}, timeout=30)
    assert good.status_code == 200, good.text
    filled = httpx.post(f"{base}/v1/fill-mask", json={"inputs": "the [MASK] worked"}, timeout=30)
    assert filled.status_code == 200, filled.text


def assert_valid_answer(response: httpx.Response) -> None:
    """A 200 with a body of the documented shape, or a 4xx in the one error shape."""
    assert response.status_code < 500, response.text[:500]
    body = response.json()
    if response.status_code == 200:
        answers = body.get("predictions", body.get("explanations"))
        assert body["model"] and body["version"] and isinstance(answers, list)
        return
    assert 400 <= response.status_code < 500, response.status_code
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


@pytest.mark.parametrize(
    ("path", "body", "headers"), [case[1:] for case in HOSTILE], ids=[c[0] for c in HOSTILE]
)
def test_hostile_request_is_a_4xx_or_a_valid_answer(server, path, body, headers):  # noqa: F811
    assert_valid_answer(post(server, path, body, headers))
    assert_still_serving(server)


def test_ten_megabytes_are_refused_before_they_are_read(server):  # noqa: F811
    response = post(server, "/v1/classify", text_body("a" * TEN_MB), JSON)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"


def test_ten_megabytes_without_content_length_are_cut_off(server):  # noqa: F811
    def chunks():
        yield b'{"inputs": "'
        for _ in range(10):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(f"{server}/v1/classify", content=chunks(), headers=JSON, timeout=60)
    assert response.status_code == 413, response.text
    assert_still_serving(server)


def test_thousands_of_masks_are_answered_within_the_token_limit(server):  # noqa: F811
    response = post(server, "/v1/fill-mask", text_body("[MASK]" * 3000, top_k=1), JSON)
    assert response.status_code == 200, response.text
    masks = response.json()["predictions"][0]
    assert 0 < len(masks) < 3000, "truncation keeps only the masks inside the model's token limit"


def test_unicode_round_trips_into_the_filled_sequence(server):  # noqa: F811
    response = post(server, "/v1/fill-mask", text_body("é [MASK] 😀", top_k=1), JSON)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    response.json()  # valid UTF-8 JSON


# ---- property-based: schemathesis against the served OpenAPI document -----------------------------------


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):  # noqa: F811
    """Bounded: a fixed number of examples per operation, derandomized, checks for 5xx and for responses
    that do not match the documented schema. Runs the CLI (its pytest plugin wants a module-level schema)."""
    report = tmp_path / "junit.xml"
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "50",
        "--seed",
        "1",
        "--request-timeout",
        "30",
        "--max-response-time",
        "30",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--no-color",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    suite = ElementTree.parse(report).getroot()
    tested = {case.get("name") for case in suite.iter("testcase")}
    assert {"POST /v1/classify", "POST /v1/fill-mask", "POST /v1/explain", "GET /v1/models"} <= tested, tested
    assert "GET /health" in tested
    assert suite.get("failures") == "0" and suite.get("errors") == "0"
    assert_still_serving(server)


# ---- no pickle, no remote code ---------------------------------------------------------------------------


def _calls_with_keyword(source: str, keyword: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == keyword:
                    found.append((node.lineno, ast.unparse(kw.value)))
    return found


def test_the_service_never_enables_remote_code_nor_unpickles():
    for path in SERVICE.rglob("*.py"):
        source = path.read_text()
        assert not [v for _, v in _calls_with_keyword(source, "trust_remote_code") if v != "False"], path
        assert not [v for _, v in _calls_with_keyword(source, "weights_only") if v != "True"], path
        assert not [v for _, v in _calls_with_keyword(source, "use_safetensors") if v != "True"], path
        tree = ast.parse(source)
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "cPickle", "dill", "joblib"}, path
    runtime = [p.read_text() for p in (SERVICE / "runtime").rglob("*.py")]
    assert not any("torch.load" in source for source in runtime), "the serve path reads safetensors only"
    model_loads = [
        node
        for source in runtime
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "from_pretrained"
        and "Tokenizer" not in ast.unparse(node.func.value)
    ]
    assert model_loads, "the runtime loads its models with from_pretrained"
    for call in model_loads:
        assert any(kw.arg == "use_safetensors" and ast.unparse(kw.value) == "True" for kw in call.keywords), (
            ast.unparse(call)
        )


def test_the_store_refuses_pickle_weights(tmp_path, tiny_classifier_dir):
    store = ModelStore(tmp_path / "store")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_classifier_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    with pytest.raises(StoreError, match="pickle"):
        publish_version(store, "sneaky", folder, {"task": "classification"}, created_by="test")
    assert store.versions("sneaky") == []


def test_a_pickle_slipped_into_a_published_version_fails_verification(tmp_path, tiny_classifier_dir):
    store = ModelStore(tmp_path / "store")
    publish_version(store, "sentiment", tiny_classifier_dir, {"task": "classification"}, created_by="test")
    (store.version_dir("sentiment", "1") / "pytorch_model.bin").write_bytes(b"\x80\x04 payload")
    with pytest.raises(IntegrityError, match=r"pytorch_model\.bin is not in the manifest"):
        verify_version(store, "sentiment", "1")
