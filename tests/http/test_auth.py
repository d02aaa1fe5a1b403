"""API keys and the structured access log, against a real server with keys from the environment and a file."""

from __future__ import annotations

import time

import httpx
import pytest

from bertserve.auth import UNAUTHORIZED_MESSAGE, configured_keys, read_keys_file
from bertserve.config import Settings
from tests.server_process import ServerURL, log_entries, running_server

ENV_KEY = "env-key-3f9c2a71d5"
FILE_KEY = "file-key-b81e44c0aa"
WRONG_KEY = "wrong-key-77d0e1f2c9"
SINGLE_KEY = "single-key-5a0b93e6d4"  # BERTSERVE_API_KEY
CLASSIFY = {"inputs": ["my secret text about headaches"]}


@pytest.fixture(scope="module")
def keyed_server(tiny_store, tmp_path_factory) -> ServerURL:
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text(f"# rotated in 2026-11\n{FILE_KEY}\n\n  # old-key-is-gone\n")
    env = {
        "BERTSERVE_API_KEYS": f"{ENV_KEY}, another-key-0000",
        "BERTSERVE_API_KEYS_FILE": str(keys_file),
        "BERTSERVE_API_KEY": SINGLE_KEY,
        "BERTSERVE_AUTH_OPEN_PATHS": "/health",  # /metrics protected too
        "BERTSERVE_MODELS": "sentiment",
    }
    with running_server(tiny_store.root, env=env) as base:
        yield base


def access_lines(base: ServerURL) -> list[dict]:
    return [entry for entry in log_entries(base.log) if entry["logger"] == "bertserve.access"]


def access_line(base: ServerURL, request_id: str) -> dict:
    """The access line of one request; it is written just after the response, so wait a little for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [entry for entry in access_lines(base) if entry["request_id"] == request_id]
        if found:
            assert len(found) == 1, found
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no access line for request {request_id}")


def test_keys_file_skips_comments_and_blank_lines(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\na-key\n\n b-key  # trailing note\n")
    assert read_keys_file(path) == ["a-key", "b-key"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ENV_KEY},  # no scheme
        {"Authorization": f"Basic {ENV_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Authorization": f"Bearer {ENV_KEY}x"},
        {"Authorization": f"Bearer {ENV_KEY[:-1]}"},
        {"X-API-Key": WRONG_KEY},
        {"X-API-Key": ""},
    ],
    ids=["missing", "no-scheme", "basic", "empty", "wrong", "longer", "prefix", "wrong-x-api-key", "empty-x"],
)
def test_every_refusal_is_the_same_401(keyed_server, headers):
    for method, path, body in [
        ("POST", "/v1/classify", CLASSIFY),
        ("GET", "/v1/models", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ]:
        response = httpx.request(method, f"{keyed_server}{path}", json=body, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        code = "invalid_api_key" if path == "/v1/models" else "unauthorized"  # OpenAI's error shape there
        assert (error["code"], error["message"]) == (code, UNAUTHORIZED_MESSAGE)


@pytest.mark.parametrize("key", [ENV_KEY, "another-key-0000", FILE_KEY, SINGLE_KEY])
def test_every_configured_key_is_accepted(keyed_server, key):
    auth = {"Authorization": f"Bearer {key}"}
    response = httpx.post(f"{keyed_server}/v1/classify", json=CLASSIFY, headers=auth, timeout=30)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{keyed_server}/v1/models", headers=auth, timeout=30).status_code == 200
    lowercase = {"Authorization": f"bearer {key}"}
    assert httpx.get(f"{keyed_server}/metrics", headers=lowercase, timeout=30).status_code == 200
    assert httpx.get(f"{keyed_server}/v1/models", headers={"X-API-Key": key}, timeout=30).status_code == 200


def test_a_keys_file_without_a_key_refuses_to_start(tiny_store, tmp_path):
    """It would silently turn authentication off: a configuration mistake, one line, exit code 2."""
    empty = tmp_path / "keys.txt"
    empty.write_text("# every key was removed\n\n")
    env = {"BERTSERVE_API_KEYS_FILE": str(empty), "BERTSERVE_MODELS": "sentiment"}
    with pytest.raises(RuntimeError, match="server exited with 2") as failed:  # noqa: SIM117
        with running_server(tiny_store.root, env=env, timeout=120):
            pass
    said = str(failed.value).split(":", 1)[1].strip()
    assert said == f"bertserve serve: BERTSERVE_API_KEYS_FILE {empty} holds no key", said


def test_settings_never_show_the_keys():
    settings = Settings(api_keys=f"{ENV_KEY},{FILE_KEY}", api_key=WRONG_KEY)
    assert len(configured_keys(settings)) == 3
    for shown in (repr(settings), str(settings.model_dump()), settings.model_dump_json()):
        assert ENV_KEY not in shown and FILE_KEY not in shown and WRONG_KEY not in shown


def test_open_paths_need_no_key(keyed_server):
    assert httpx.get(f"{keyed_server}/health", timeout=30).status_code == 200


def test_liveness_needs_no_key_by_default():
    """A liveness probe sends no key: /live is open unless the operator protects it on purpose."""
    assert "/live" in Settings().auth_open_paths.split(",")


def test_keys_and_texts_never_reach_the_log(keyed_server):
    httpx.post(f"{keyed_server}/v1/classify", json=CLASSIFY, headers={"Authorization": f"Bearer {WRONG_KEY}"})
    good = httpx.post(
        f"{keyed_server}/v1/classify", json=CLASSIFY, headers={"Authorization": f"Bearer {FILE_KEY}"}
    )
    assert good.status_code == 200
    access_line(keyed_server, good.headers["x-request-id"])
    log = keyed_server.log.read_text()
    for secret in (ENV_KEY, FILE_KEY, WRONG_KEY, "another-key-0000", CLASSIFY["inputs"][0]):
        assert secret not in log


def test_every_log_line_is_one_json_object(keyed_server):
    """The worker loads its models (transformers would draw progress bars) while the HTTP processes log:
    several processes, one stream, and still one parseable object per line."""
    auth = {"Authorization": f"Bearer {ENV_KEY}"}
    answered = httpx.post(f"{keyed_server}/v1/classify", json=CLASSIFY, headers=auth, timeout=30)
    refused = httpx.post(f"{keyed_server}/v1/classify", json={"inputs": []}, headers=auth, timeout=30)
    assert (answered.status_code, refused.status_code) == (200, 422)
    access_line(keyed_server, refused.headers["x-request-id"])
    entries = log_entries(keyed_server.log)
    assert len(entries) >= 2 and all(entry["level"] in {"info", "warning", "error"} for entry in entries)


def test_request_id_is_echoed_and_logged(keyed_server):
    auth = {"Authorization": f"Bearer {ENV_KEY}"}
    response = httpx.post(
        f"{keyed_server}/v1/classify", json=CLASSIFY, headers={**auth, "X-Request-ID": "trace-42.a:b_c"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a:b_c"
    entry = access_line(keyed_server, "trace-42.a:b_c")
    assert entry["method"] == "POST" and entry["path"] == "/v1/classify" and entry["status"] == 200
    assert (entry["model"], entry["version"]) == ("sentiment", "1")
    assert entry["duration_ms"] > 0


@pytest.mark.parametrize("given", ["x" * 129, "has space", "quote\"'", "é"])
def test_an_unsafe_request_id_is_replaced(keyed_server, given):
    response = httpx.get(
        f"{keyed_server}/v1/models",
        headers={"X-Request-ID": given.encode("utf-8"), "Authorization": f"Bearer {ENV_KEY}"},
    )
    assert response.status_code == 200
    generated = response.headers["x-request-id"]
    assert generated != given and len(generated) == 32 and int(generated, 16) >= 0


def test_error_bodies_carry_the_request_id(keyed_server):
    unauthorized = httpx.get(f"{keyed_server}/v1/models", headers={"X-Request-ID": "req-401"})
    assert unauthorized.json()["error"]["request_id"] == "req-401"
    auth = {"Authorization": f"Bearer {ENV_KEY}"}
    unknown = httpx.post(
        f"{keyed_server}/v1/classify", json={"inputs": "x", "model": "nope"}, headers=auth, timeout=30
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["request_id"] == unknown.headers["x-request-id"]
    entry = access_line(keyed_server, unknown.headers["x-request-id"])
    assert entry["status"] == 404


def test_text_log_format(tiny_store):
    with running_server(tiny_store.root, "--log-format", "text", env={"BERTSERVE_MODELS": "mlm"}) as base:
        httpx.get(f"{base}/v1/models", headers={"X-Request-ID": "plain-1"})
        httpx.get(f"{base}/health")  # the access line is written after the response: one more round trip
        lines = base.log.read_text().splitlines()
    line = next(line for line in lines if "request_id=plain-1" in line)
    assert "bertserve.access" in line and "GET /v1/models 200" in line and "status=200" in line
