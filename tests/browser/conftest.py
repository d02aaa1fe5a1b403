"""One tiny store and one real server for the browser tests (the HTTP tests' store)."""

from __future__ import annotations

import pytest

from tests.http.conftest import build_tiny_store
from tests.server_process import running_server


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("store")
    return build_tiny_store(base / "model_store", base / "hf")


@pytest.fixture(scope="module")
def server(tiny_store) -> str:
    with running_server(tiny_store.root, env={"BERTSERVE_EXPLAIN_WORKERS": "1"}) as base:
        yield base


@pytest.fixture(scope="module")
def page():
    from tests.browser.browser import chromium

    with chromium() as browser:
        yield browser
