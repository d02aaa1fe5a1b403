"""Hostile input against a real server: every case is a 4xx in the one error shape or a valid 200, never a
5xx, and the server answers normally afterwards. Then property-based fuzzing of /openapi.json, and a corpus
sent to every route of the app, in each protocol's error shape, with and without a key configured.

The serve path also never unpickles anything nor runs code shipped with a model (trust_remote_code)."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from bertserve.config import Settings
from bertserve.protocols import kserve
from bertserve.protocols.errors import protocol_of
from bertserve.server import INSTRUMENTED
from bertserve.store.errors import IntegrityError, StoreError
from bertserve.store.layout import ModelStore
from bertserve.store.publish import import_hf_folder, publish_version, verify_version
from tests.http.conftest import build_tiny_store, server, tiny_store  # noqa: F401  (the shared tiny store and its server)
from tests.server_process import ServerURL, running_server
from tests.tiny_models import build_cross_encoder, build_sentence_encoder

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


# ---- every route of the app, with and without a key, in its own protocol's error shape --------------------

KEY = "hostile-key-5b0e"
MAX_BODY = Settings().max_body_bytes
OPEN_PATHS = frozenset(Settings().auth_open_paths.split(","))
STALL_S = 1.0  # /live answers within this while any hostile request is in flight (a stall bound)
CONCURRENCY = 4  # in flight at once: under the queue bound (a 503 is a fault), and the 2 CPUs CI has


def _deep(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _fill(item: object, budget: int = MAX_BODY - 4096) -> list:
    """As many copies of `item` as fit in a body under the limit (the most a client can send)."""
    size = len(json.dumps(item, separators=(",", ":"))) + 1
    return [item] * (budget // size)


# A wrong value for any field: huge and negative integers, wrong types, lists where objects belong (and the
# reverse), nesting deeper than orjson writes (254), 2,048 maximal texts, and a body-sized list of objects.
WRONG_VALUES = {
    "int-2^70": 2**70,
    "int-400-digits": 10**400,
    "negative": -1,
    "string": "x",
    "null": None,
    "empty-list": [],
    "object": {},
    "list-of-objects": [{}],
    "nested-300": _deep(300),
    "2048-maximal-texts": ["a" * (MAX_BODY // 2048 - 16)] * 2048,
    "body-of-objects": _fill({}),
}
BIG_VALUES = {"2048-maximal-texts", "body-of-objects"}  # sent to array fields only (1 MB each)


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# Whole bodies any route may get: nesting past every parser's limit, JSON that is not an object, and the
# binary tensor framing where it means nothing.
WHOLE_BODIES = [
    ("nested-300", nested(300), JSON),
    ("nested-2000", nested(2000), JSON),
    ("objects-nested-300", b'{"inputs":' + b'{"a":' * 300 + b"1" + b"}" * 301, JSON),
    ("json-list", b"[1]", JSON),
    ("json-int-2^70", str(2**70).encode(), JSON),
    ("binary-header-list", b"[1]", {**JSON, "inference-header-content-length": "3"}),
    ("binary-header-garbage", b'{"inputs"', {**JSON, "inference-header-content-length": "x"}),
]


def _binary(header: object, data: bytes = b"", length: int | None = None) -> tuple[bytes, dict]:
    encoded = header if isinstance(header, bytes) else _compact(header)
    size = len(encoded) if length is None else length
    return encoded + data, {**JSON, "inference-header-content-length": str(size)}


def _tensor(**fields) -> dict:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", **fields}]}


def _binary_tensor(size: object, datatype: str = "BYTES") -> dict:
    tensor = {"name": "text", "shape": [1], "datatype": datatype, "parameters": {"binary_data_size": size}}
    return {"inputs": [tensor]}


# KServe's infer routes: tensors and binary frames gone wrong
KSERVE_BODIES = [
    ("empty-tensor", _compact(_tensor(shape=[0], data=[])), JSON),
    ("giant-shape", _compact(_tensor(shape=_fill(2**62), data=["x"])), JSON),
    ("shape-2^70", _compact(_tensor(shape=[2**70], data=["x"])), JSON),
    ("shape-negative", _compact(_tensor(shape=[-1], data=["x"])), JSON),
    ("data-body-of-ints", _compact(_tensor(shape=[1], data=_fill(1))), JSON),
    ("binary-inputs-not-objects", *_binary({"inputs": [1]})),
    ("binary-inputs-an-object", *_binary({"inputs": {"a": 1}})),
    ("binary-parameters-list", *_binary({"inputs": [{"name": "t", "parameters": [1]}]})),
    ("binary-size-object", *_binary(_binary_tensor({}))),
    ("binary-size-negative", *_binary(_binary_tensor(-4), b"abcd")),
    ("binary-size-float", *_binary(_binary_tensor(4.5), b"abcd")),
    ("binary-size-2^70", *_binary(_binary_tensor(2**70), b"abcd")),
    ("binary-size-string", *_binary(_binary_tensor("4"), b"abcd")),
    ("binary-chunk-short", *_binary(_binary_tensor(8), b"abcd")),
    ("binary-prefix-truncated", *_binary(_binary_tensor(2), b"\x05\x00")),
    ("binary-element-past-end", *_binary(_binary_tensor(5), b"\x09\x00\x00\x00a")),
    ("binary-invalid-utf8", *_binary(_binary_tensor(6), b"\x02\x00\x00\x00\xff\xfe")),
    ("binary-not-bytes", *_binary(_binary_tensor(4, "FP32"), b"\x00\x00\x80?")),
    ("binary-id-2^70", *_binary({**_binary_tensor(5), "id": 2**70}, b"\x01\x00\x00\x00a")),
    ("binary-nested-300", *_binary({**_binary_tensor(5), "id": _deep(300)}, b"\x01\x00\x00\x00a")),
    ("binary-nested-2000", *_binary(nested(2000))),
    ("binary-length-zero", *_binary(_binary_tensor(5), b"\x01\x00\x00\x00a", length=0)),
    ("binary-length-past-body", *_binary(_binary_tensor(5), b"", length=10**6)),
]


class Schemas:
    """The app's OpenAPI document: request bodies of each operation, with their $refs resolved."""

    def __init__(self, document: dict) -> None:
        self.components = document.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[1]]
        return schema

    def branches(self, schema: dict) -> list[dict]:
        """The non-null alternatives of a union (one schema when it is none)."""
        schema = self.resolve(schema)
        alternatives = schema.get("anyOf") or schema.get("oneOf") or schema.get("allOf")
        if not alternatives:
            return [schema]
        found = [b for alt in alternatives for b in self.branches(alt)]
        return [b for b in found if b.get("type") != "null"] or found

    def example(self, schema: dict, depth: int = 0) -> object:
        """A plausible value: the schema's own example, else one of its type (objects: required fields)."""
        schema = self.branches(schema)[0]
        if schema.get("examples"):
            return schema["examples"][0]
        if "const" in schema or "enum" in schema:
            return schema.get("const", (schema.get("enum") or [None])[0])
        kind = schema.get("type")
        if kind == "array":
            if "prefixItems" in schema:
                return [self.example(item, depth + 1) for item in schema["prefixItems"]]
            return [self.example(schema.get("items", {}), depth + 1)] if depth < 4 else []
        if kind == "object":
            properties = schema.get("properties", {})
            return {
                k: self.example(properties[k], depth + 1) for k in schema.get("required", ()) if depth < 4
            }
        return {"string": "the [MASK] worked", "integer": 1, "number": 0.5, "boolean": True}.get(kind)

    def fields(self, schema: dict, prefix: tuple = (), depth: int = 0) -> list[tuple[tuple, bool]]:
        """Every field path of a body (into objects, and into the first item of arrays of objects), each
        with whether it can hold an array."""
        found = []
        for branch in self.branches(schema):
            for name, sub in branch.get("properties", {}).items():
                subs = self.branches(sub)
                found.append(((*prefix, name), any(s.get("type") == "array" for s in subs)))
                if depth < 2:
                    for s in subs:
                        items = self.resolve(s.get("items", {})) if s.get("type") == "array" else None
                        found += self.fields(s, (*prefix, name), depth + 1)
                        if items is not None:
                            found += self.fields(items, (*prefix, name, 0), depth + 1)
        return list(dict.fromkeys(found))


def _set(body: object, path: tuple, value: object) -> object:
    """A copy of `body` with `path` set to `value` (made where the example lacks it)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(body) if isinstance(body, list) and body else [{}]
        items[0] = _set(items[0], rest, value)
        return items
    copy = dict(body) if isinstance(body, dict) else {}
    copy[head] = _set(copy.get(head, {}), rest, value)
    return copy


def route_bodies(schemas: Schemas, schema: dict | None) -> list[tuple[str, bytes, dict]]:
    """A wrong value in each field of a route's body (the rest plausible), then the whole-body cases."""
    cases = []
    if schema is not None:
        base = schemas.example(schema)
        for path, holds_array in schemas.fields(schema):
            for name, value in WRONG_VALUES.items():
                if name in BIG_VALUES and not holds_array:
                    continue
                body = _compact(_set(base, path, value))
                if len(body) > MAX_BODY:  # the rest of the example pushed it over: as large as fits
                    continue
                cases.append((f"{'.'.join(map(str, path))}={name}", body, JSON))
    return cases + WHOLE_BODIES


def app_routes(base: str, document: dict, auth: dict) -> list[tuple[str, str, dict | None]]:
    """(method, path, request schema) of every route in /openapi.json, with path parameters filled with a
    model of each task, and the instrumented routes it hides (the protocol middleware's dispatch targets)."""
    models = httpx.get(f"{base}/v1/models", headers=auth, timeout=30).json()["models"]
    one_per_task = list({m["task"]: m["name"] for m in models}.values())
    routes = []
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            names = one_per_task if "{" in template else [""]
            for name in names:
                path = re.sub(r"\{model_version\}", "1", template)
                routes.append((method.upper(), re.sub(r"\{[^}]+\}", name, path), schema))
    listed = {path for _, path, _ in routes}
    routes += [("POST", path, None) for path in INSTRUMENTED if path not in listed]
    return routes


def protocol_error_shape(path: str, body: object) -> bool:
    """Whether an error answer is in the shape of the protocol its path speaks (protocols/errors.py)."""
    protocol = protocol_of(path)
    if not isinstance(body, dict):
        return False
    error = body.get("error")
    if protocol == "openai":
        return (
            set(body) == {"error"}
            and isinstance(error, dict)
            and {"message", "type", "param", "code"} <= set(error)
        )
    if protocol == "tei":
        return set(body) == {"error", "error_type"} and isinstance(error, str)
    if protocol == "kserve":
        return set(body) == {"error"} and isinstance(error, str)
    return (
        set(body) == {"error"}
        and isinstance(error.get("code"), str)
        and isinstance(error.get("message"), str)
    )


class LiveProbe:
    """GET /live every 50 ms from a thread of its own while the corpus runs: the slowest answer is how long
    an HTTP process stalled."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.slowest = (0.0, "")
        self.running = ""  # the cases in flight, as last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(0.05):
                started, running = time.monotonic(), self.running
                try:
                    ok = client.get(f"{self.base}/live").status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.monotonic() - started if ok else float("inf")
                if took > self.slowest[0]:
                    self.slowest = (took, running)

    def __enter__(self) -> LiveProbe:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


async def send_corpus(
    base: str, cases: list[tuple[str, str, str, bytes, dict]], probe: LiveProbe
) -> list[tuple[str, str, httpx.Response | Exception]]:
    """Every case, CONCURRENCY at a time, without a key; (method path, case id, response or the error it
    raised)."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    gate = asyncio.Semaphore(CONCURRENCY)
    in_flight: set[str] = set()

    async def one(client: httpx.AsyncClient, method: str, path: str, case: str, body: bytes, extra: dict):
        async with gate:
            label = f"{method} {path} {case}"
            in_flight.add(label)
            probe.running = ", ".join(sorted(in_flight))
            try:
                content = body if method in ("POST", "PUT", "PATCH") else None
                answer = await client.request(method, f"{base}{path}", content=content, headers=extra)
            except httpx.HTTPError as exc:
                answer = exc
            in_flight.discard(label)
            return f"{method} {path}", case, answer

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(one(client, *case) for case in cases))


def corpus(base: str, auth: dict) -> list[tuple[str, str, str, bytes, dict]]:
    """(method, path, case id, body, headers) of every hostile request (`auth` reads the routes)."""
    document = httpx.get(f"{base}/openapi.json", headers=auth, timeout=30).json()
    schemas = Schemas(document)
    cases = []
    for method, path, schema in app_routes(base, document, auth):
        if method != "POST":
            cases.append((method, path, "no-body", b"", {}))
            continue
        bodies = route_bodies(schemas, schema)
        if kserve.INFER_PATTERN.match(path) or path in kserve.INFER_PATHS.values():
            bodies += KSERVE_BODIES
        cases += [(method, path, *body) for body in bodies]
    return cases


@pytest.fixture(scope="module")
def every_task_store(tmp_path_factory) -> ModelStore:
    """Our tiny store plus an embedding model and a cross-encoder: every route reaches a model it serves."""
    base = tmp_path_factory.mktemp("hostile-every-task")
    store = build_tiny_store(base / "model_store", base / "hf")
    import_hf_folder(store, build_sentence_encoder(base / "minilm", seed=3), "minilm")
    import_hf_folder(store, build_cross_encoder(base / "ce", seed=4), "ce")
    return store


@pytest.fixture(scope="module", params=["no-key-configured", "key-configured"])
def keyed_server(request, every_task_store) -> tuple[ServerURL, bool]:
    keyed = request.param == "key-configured"
    env = {"BERTSERVE_API_KEY": KEY} if keyed else {}
    with running_server(every_task_store.root, "--workers", "1", env=env) as base:
        yield base, keyed


def test_every_route_answers_hostile_bodies_in_its_protocols_shape_without_stalling(keyed_server):
    """Each route of the app (its OpenAPI document, and the protocol routes it hides) gets a wrong value in
    every field of its body, whole bodies that parse badly, and KServe's broken tensors and binary frames;
    the client sends no key. Never a 5xx nor a dropped connection; every error in the route's protocol's
    shape; with a key configured, 401 before anything is parsed; and /live within STALL_S throughout."""
    base, keyed = keyed_server
    cases = corpus(base, {"Authorization": f"Bearer {KEY}"} if keyed else {})
    started = time.monotonic()
    with LiveProbe(base) as probe:
        results = asyncio.run(send_corpus(base, cases, probe))
    took = time.monotonic() - started
    failures = []
    for route, case, answer in results:
        if isinstance(answer, Exception):
            failures.append(f"{route} {case}: {type(answer).__name__} {answer}")
            continue
        status, path = answer.status_code, route.split(" ", 1)[1]
        try:
            body = answer.json()
        except ValueError:
            body = answer.text[:200]
        if status >= 500:
            failures.append(f"{route} {case}: {status} {str(body)[:200]}")
        elif keyed and path not in OPEN_PATHS and status != 401:
            failures.append(f"{route} {case}: {status}, not 401, without the key")
        elif status >= 400 and not protocol_error_shape(path, body):
            failures.append(f"{route} {case}: {status} not in {protocol_of(path)}'s shape: {str(body)[:200]}")
    slowest, running = probe.slowest
    assert not failures, f"{len(failures)} of {len(results)} failed:\n" + "\n".join(failures[:60])
    assert slowest < STALL_S, f"/live took {slowest:.2f} s while in flight: {running[:2000]}"
    assert len(results) > 500, len(results)  # the routes were found
    print(f"{len(results)} hostile requests in {took:.1f} s; /live at worst {slowest:.3f} s, with {running}")
    assert_still_serving_all(base, keyed)


def assert_still_serving_all(base: str, keyed: bool) -> None:
    auth = {"Authorization": f"Bearer {KEY}"} if keyed else {}
    good = httpx.post(f"{base}/v1/classify", json={"inputs": "the drug worked"}, headers=auth, timeout=30)
    assert good.status_code == 200, good.text
    infer = _tensor(data=["the drug worked"])
    answer = httpx.post(f"{base}/v2/models/minilm/infer", json=infer, headers=auth, timeout=30)
    assert answer.status_code == 200, answer.text
