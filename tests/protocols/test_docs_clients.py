"""docs/clients.md: every snippet runs as written against a real server (only its address and key put in)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.protocols.common import KEY

PAGE = Path(__file__).resolve().parents[2] / "docs" / "clients.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)


def test_the_page_has_one_snippet_per_client():
    first_imports = [
        re.search(r"^(?:from|import) (\w+)", snippet, re.MULTILINE).group(1) for snippet in SNIPPETS
    ]
    assert first_imports == ["openai", "langchain_openai", "huggingface_hub", "cohere", "numpy"]
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
