"""The default models as `make serve` builds them (full budget), shared by the integration tests.

Built once into `.cache/default-store/model_store` (about 13 minutes on 2 cores) and reused by later runs:
bootstrap skips every step whose result the store already holds. `BERTSERVE_TEST_STORE` points the tests
at another store built by `bertserve bootstrap`, e.g. the repository's `model_store/` after `make serve`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bertserve.training.bootstrap import bootstrap

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def default_store() -> Path:
    """A full-budget bootstrapped store: what a fresh clone's `make serve` serves."""
    root = Path(os.environ.get("BERTSERVE_TEST_STORE", REPO / ".cache" / "default-store" / "model_store"))
    bootstrap(root, budget="full", progress=False)
    return root
