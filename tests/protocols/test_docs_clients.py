"""docs/clients.md: every snippet runs as written against a real server (only its address and key put in)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.protocols.common import KEY

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_page_has_one_snippet_per_client():
    first_imports = [
        re.search(r"^(?:from|import) (\w+)", snippet, re.MULTILINE).group(1) for snippet in SNIPPETS
    ]
    assert first_imports == ["httpx", "openai", "langchain_openai", "huggingface_hub", "cohere", "numpy"]
    assert "tritonclient" in SNIPPETS[-1]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet-{i}" for i in range(len(SNIPPETS))])
def test_snippet_runs(protocol_server, snippet):
    address = protocol_server.removeprefix("http://")
    code = snippet.replace("http://localhost:8000", protocol_server).replace("localhost:8000", address)
    code = code.replace("YOUR_KEY", KEY)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"{PAGE.name} snippet", "exec"), {})
    assert printed.getvalue().strip()


@contextlib.contextmanager
def busy_server(answers: list[tuple[int, dict[str, str]]]) -> Iterator[tuple[str, list[float]]]:
    """A stub on 127.0.0.1 that answers each POST with the next (status, headers) of `answers` (the last
    one for ever after), with a classify answer's body; yields its URL and the times requests came."""
    came: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status, headers = answers[min(len(came), len(answers) - 1)]
            came.append(time.monotonic())
            body = json.dumps({"predictions": [[{"label": "positive", "score": 0.9}]]}).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", came
    finally:
        server.shutdown()


def retrying_client(url: str) -> dict:
    """The page's retrying snippet, as printed, aimed at `url`; returns its namespace."""
    (snippet,) = [s for s in SNIPPETS if "Retry-After" in s]
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(
            compile(snippet.replace("http://localhost:8000", url), f"{PAGE.name} snippet", "exec"), namespace
        )
    return namespace


def test_the_retrying_client_waits_out_a_503_for_its_retry_after():
    with busy_server([(503, {"Retry-After": "1"}), (200, {})]) as (url, came):
        retrying_client(url)
    assert len(came) == 2 and came[1] - came[0] >= 1.0


def test_the_retrying_client_gives_up_after_its_attempts():
    with (
        busy_server([(503, {"Retry-After": "0"})]) as (url, came),
        pytest.raises(httpx.HTTPStatusError, match="503"),
    ):
        retrying_client(url)
    assert len(came) == 5
