"""The default models as `make serve` builds them, shared by the integration tests.

The sentiment versions are trained with the full budget, exactly as `bertserve bootstrap` trains them (the
README's classify examples and the majority-baseline check need the real ones). The masked LM gets the quick
budget's few steps: the README's fill-mask example is checked for model, version and shape, which do not
depend on how long it trained, and the full 300 steps would add ~9 minutes to every fresh CI run.

Built once into `.cache/default-store/model_store` (about 5 minutes on 2 cores with native bf16) and
reused by later runs: bootstrap skips every step whose result the store already holds. `BERTSERVE_TEST_STORE`
points the tests at another store built by `bertserve bootstrap`, e.g. `model_store/` after `make serve`."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from bertserve.training.bootstrap import BUDGETS, bootstrap

REPO = Path(__file__).parents[2]
STORE_BUILD_TIMEOUT = 3600  # seconds: the first test that needs the store pays for building it


def pytest_collection_modifyitems(config, items) -> None:
    """Tests that use the store get the time to build it (pytest-timeout counts fixture set-up)."""
    for item in items:
        if "default_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(STORE_BUILD_TIMEOUT))


@pytest.fixture(scope="session")
def default_store() -> Path:
    """A bootstrapped store: the full-budget sentiment versions and production alias of a fresh clone."""
    root = Path(os.environ.get("BERTSERVE_TEST_STORE", REPO / ".cache" / "default-store" / "model_store"))
    full, quick = BUDGETS["full"], BUDGETS["quick"]
    plan = dataclasses.replace(
        full, name="integration", pretrain=quick.pretrain, stdlib_chars=quick.stdlib_chars
    )
    BUDGETS.setdefault(plan.name, plan)
    bootstrap(root, budget=plan.name, progress=False)
    return root
